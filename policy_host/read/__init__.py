"""Reading: the YAML reader, the provider config, tenant files and the parse cache."""
