"""The pack language: reading YAML and .ops files, the schema, the typed model, the
expression language, the built-in action catalogue and plugins, and the semantic checks."""
