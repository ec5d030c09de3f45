"""The FT-SVM library: choosing a linear SVM's C by inner cross-validation (`search`), scoring one outer fold
under a protocol (`folds`), and the deployed SVM's Platt scaling (`calibration`). Pure functions over arrays;
the `svm` stage (`sonotune.stages.svm`) and `sonotune deploy` read and write.
"""
