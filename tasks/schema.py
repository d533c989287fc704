"""The credit-default input schema (UCI default of credit card clients, Kaggle CSV layout)."""

ID_COLUMN = "ID"
LABEL_COLUMN = "default.payment.next.month"
PAY_STATUS_COLUMNS = ["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"]
BILL_COLUMNS = [f"BILL_AMT{i}" for i in range(1, 7)]
PAYMENT_COLUMNS = [f"PAY_AMT{i}" for i in range(1, 7)]
FEATURE_COLUMNS = [
    "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE",
    *PAY_STATUS_COLUMNS, *BILL_COLUMNS, *PAYMENT_COLUMNS,
]
COLUMNS = [ID_COLUMN, *FEATURE_COLUMNS, LABEL_COLUMN]
