"""The digits world: scikit-learn's 8x8 handwritten digits with a conditional VAE, a class-conditional DDPM
and a digits classifier, small enough to train on a CPU in minutes (the Selective Amnesia experiments in
miniature). `loading.load_digits_model` gives either generator as a pipeline-like `DigitsModel`.
"""
