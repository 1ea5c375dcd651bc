"""A verifier-like function whose module takes 1.5 s to import (the hostile tests' stand-in for a worker that
re-imports torch and the CLI on a loaded machine), and one that never returns."""

import time

time.sleep(1.5)


def echo(x):
    return x


def spin(x):
    while True:
        x += 1
