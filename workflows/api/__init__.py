"""REST API of workflow runs and the exception queue."""
