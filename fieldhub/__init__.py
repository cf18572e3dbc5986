"""fieldhub's shared package: configuration, database access, the CLI and the local stack."""
