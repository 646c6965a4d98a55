"""Entry file for MLflow's models-from-code logging (``python_model=`` points here).

MLflow executes this file when it loads the model; ``set_model`` names the
instance to serve. Kept apart from ``model.py`` so importing the class has no
side effect.
"""

from mlflow.models import set_model

from pyfunc.model import TabularClassifier

set_model(TabularClassifier())
