"""Adapters that plug guardpool into agent stacks.

Each adapter is its own module and imports its third-party package lazily (see
``guardpool.extras.require``), so ``import guardpool.integrations.guarded`` never pulls
in ``openai-agents``, ``litellm`` or ``mcp``:

    claude_code   Claude Code hook payloads <-> operations and decisions
                  (used by ``guardpool hook claude-code`` and the sidecar's hook route)
    guarded       ``@guarded(...)`` for plain sync and async tool functions
    agents        OpenAI Agents SDK input/output/tool guardrails   (guardpool[agents])
    litellm       a LiteLLM callback that reserves before and settles after (guardpool[litellm])
    mcp_proxy     a guarding proxy between an MCP client and a stdio server (guardpool[mcp])
"""
