"""The LLM agent: a prompt built from the context, a chat model behind the official SDKs, and the
parsing of its answer into edits."""
