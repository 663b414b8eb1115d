"""scikit-learn's handwritten digits (1 797 images, 8x8, grey levels 0 to 16, shipped inside the
scikit-learn wheel and read offline), split once into a fixed training and test set, and a reference
classifier trained on the training digits."""

import functools

import numpy as np


#: The size of the test split (stratified by class, seeded): 1 500 training and 297 test digits.
N_TEST = 297
SPLIT_SEED = 0


@functools.cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # a core dependency; only a broken install lacks it
        raise ImportError("The digits data needs scikit-learn: pip install scikit-learn.") from e
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 8.0 - 1.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=N_TEST, stratify=y, random_state=SPLIT_SEED
    )
    for a in (x_train, x_test, y_train, y_test):
        a.setflags(write=False)
    return x_train, y_train, x_test, y_test


def load_data(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The digits of `split`, `"train"` (1 500) or `"test"` (297): images `(n, 8, 8)` float32 in
    $[-1, 1]$ ($x = p/8 - 1$ for grey level $p$) and labels `(n,)` int32. The split is fixed
    (stratified by class, seed 0), the same on every machine; the arrays are read-only."""
    x_train, y_train, x_test, y_test = _split()
    if split == "train":
        return x_train, y_train
    if split == "test":
        return x_test, y_test
    raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")


@functools.cache
def reference_classifier():
    """A multinomial logistic regression on the pixels of the training digits (scikit-learn,
    `C=1`, on images in $[-1, 1]$ flattened to 64 values): the judge of the samples' classes
    (about 96% on the test digits). `classifier.predict(images.reshape(n, 64))` gives labels,
    `classifier.decision_function(...)` the 10 logits."""
    from sklearn.linear_model import LogisticRegression

    x, y = load_data("train")
    return LogisticRegression(C=1.0, max_iter=5000).fit(x.reshape(len(x), -1), y)


def classify(images) -> np.ndarray:
    """The reference classifier's labels of images `(n, 8, 8)` in $[-1, 1]$."""
    images = np.asarray(images, np.float64)
    return reference_classifier().predict(images.reshape(len(images), -1))
