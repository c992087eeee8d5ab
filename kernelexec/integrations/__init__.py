"""Adapters that let agent frameworks run code through kernelexec.

Each module depends on an optional library and is imported on its own; ``import kernelexec``
never imports them:

- ``kernelexec.integrations.aide``: a drop-in for AIDE's ``aide.interpreter.Interpreter``
  (no extra dependency).
- ``kernelexec.integrations.smolagents``: a code executor for smolagents' ``CodeAgent``
  (extra ``smolagents``).
- ``kernelexec.integrations.mcp``: a Model Context Protocol server, also ``kernelexec mcp``
  (extra ``mcp``).
"""
