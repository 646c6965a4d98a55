"""What users call: the REST gateway, the model-server supervisor and the local stack."""
