"""The plugin host: the hook specifications, the plugin manager, the hook reference."""
