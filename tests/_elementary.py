"""Elementary rotations written out by hand: the reference rotation tests compare against."""

import numpy as np


def rx(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def ry(b):
    c, s = np.cos(b), np.sin(b)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rz(c_):
    c, s = np.cos(c_), np.sin(c_)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
