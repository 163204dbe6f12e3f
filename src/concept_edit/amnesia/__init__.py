"""Selective Amnesia: the Fisher, the EWC penalty and the model adapters (the method is `methods.amnesia`)."""
