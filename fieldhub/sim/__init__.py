"""Simulated devices and demo data: `fieldhub simulate` and what `fieldhub up --demo` adds.
They act as devices and operators would, through the core's registry and the broker."""
