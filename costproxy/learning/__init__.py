"""Learning from the deployment's own outcomes: feedback, online estimates, the judge."""
