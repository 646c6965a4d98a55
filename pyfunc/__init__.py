"""What is logged and served: the pyfunc model class and the preprocessing it shares with training."""
