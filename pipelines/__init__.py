"""KFP wiring: which stages run, in what order, with which parameters."""
