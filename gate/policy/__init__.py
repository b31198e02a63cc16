"""The policy: loading it, its JSON schema, and the guards on untrusted policy text."""
