"""The inventory: a directory of YAML files that is the source of truth for the grid."""
