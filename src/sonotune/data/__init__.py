"""Datasets: the source loaders (BUSI, DDTI, Mendeley, folders, CSV, the phantom), the manifest with its fold
groups and duplicates, the decoded image cache and the data report."""
