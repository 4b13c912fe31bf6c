"""Image (or vector) classification: datasets on the device, splits, augmentation, the task."""
