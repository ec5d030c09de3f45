"""Models: the backbone registry and factory, fine-tuning strategies, the head, the exact frozen-prefix cache and
the training of one fold (or a batch of folds). Generic Keras 3; nothing here reads files or params.yaml."""
