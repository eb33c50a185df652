"""The console's dashboard: the fleet by region, versions in the field, distributions with their charts."""
