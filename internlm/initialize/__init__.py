"""How a run starts and stops: launchers and process groups, pre-emption and requeueing."""
