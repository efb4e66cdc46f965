def g(y):
    return y * 10
