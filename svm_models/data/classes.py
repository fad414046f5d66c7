"""Class names shared by several datasets (CIFAR10-DVS has CIFAR-10's classes; N-MNIST and the
digits datasets the ten digits)."""

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGITS_CLASSES = [str(i) for i in range(10)]
