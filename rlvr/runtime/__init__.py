"""Ray start-up and the roles (roles.py), placement groups, the restart policy (faults.py), sizing and logs."""
