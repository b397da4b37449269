"""Static and dynamic analysis of users' guards: ReDoS shapes, AST scans."""
