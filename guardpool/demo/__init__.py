"""``guardpool demo``: the scripted story, with its own policy and guards shipped in the package."""
