"""Multi-round federated learning; `aggregate` holds the aggregation rules as pure functions."""
