"""The shared core: settings, database access, the registry, people, commands to devices, the
device contract and the schema. Both the apps (bridge, broker, analysis, web) and the command
line build on it; it imports none of them."""
