"""Tasks: what a task is and its data (``data``), one object per task kind with its head, loss and
metrics (``kinds``), evaluation (``evaluate``), SQuAD features and scoring (``squad``)."""
