"""sonotune: which layers of an ImageNet backbone to fine-tune for ultrasound, and does a linear SVM on the
fine-tuned features beat the MLP head — a leakage-free, tracked reproduction of Bal-Ghaoui et al. (2023).
The map of the package: docs/architecture.md."""
