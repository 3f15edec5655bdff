"""A Conference API simulator that knows the ground truth of every day it serves."""
