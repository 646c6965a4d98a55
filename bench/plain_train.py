"""The same work as `mlflow run .` on the default data, as a plain scikit-learn script (the reference time).

Reads the CSV, marks '?' as missing, splits 80/20 stratified, fits the same
pipeline (most-frequent imputation, RobustScaler, one-hot, 100-tree forest),
predicts the test split and computes the same metrics. No MLflow.
"""

import sys
import time

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, RobustScaler

started = time.perf_counter()
frame = pd.read_csv(sys.argv[1], na_values=["?"], skipinitialspace=True).drop(columns=["instance_weight"])
y = frame.pop("income").to_numpy()
numeric = frame.select_dtypes("number").columns.tolist()
categorical = [c for c in frame.columns if c not in numeric]
frame[categorical] = frame[categorical].astype(object).where(frame[categorical].notna(), np.nan)
X_train, X_test, y_train, y_test = train_test_split(frame, y, test_size=0.2, stratify=y, random_state=42)
pipeline = Pipeline([
    ("preprocess", ColumnTransformer([
        ("numeric", Pipeline([("impute", SimpleImputer(strategy="most_frequent")), ("scale", RobustScaler())]), numeric),
        ("categorical", Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                                  ("onehot", OneHotEncoder(handle_unknown="ignore"))]), categorical),
    ])),
    ("forest", RandomForestClassifier(n_estimators=100, random_state=42, n_jobs=-1)),
])
pipeline.fit(X_train, y_train)
proba = pipeline.predict_proba(X_test)
positive = "50000+."
pred = pipeline.classes_[proba.argmax(axis=1)]
column = list(pipeline.classes_).index(positive)
metrics = {
    "accuracy": accuracy_score(y_test, pred),
    "precision": precision_score(y_test, pred, pos_label=positive),
    "recall": recall_score(y_test, pred, pos_label=positive),
    "f1": f1_score(y_test, pred, pos_label=positive),
    "roc_auc": roc_auc_score(y_test == positive, proba[:, column]),
}
print(f"plain script: {time.perf_counter() - started:.1f}s", {k: round(v, 4) for k, v in metrics.items()})
