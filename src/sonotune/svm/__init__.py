"""The FT-SVM library: choosing a linear SVM's C by inner cross-validation (`search`) and scoring one outer fold
under a protocol (`folds`). Pure functions over arrays; the `svm` stage (`sonotune.stages.svm`) reads and writes.
"""
