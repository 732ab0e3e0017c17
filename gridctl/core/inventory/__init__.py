"""The inventory, pure: its model, schema, jurisdictions, target selection and export."""
