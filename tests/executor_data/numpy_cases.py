"""NumPy arrays and scalars of every neutral dtype, built the same way by the
host and by workers on other NumPy versions, and described exactly.

Loaded by the tests and, by path, inside workers: Python 3.6+ and NumPy
1.19+ (so no APIs newer than those).
"""
import numpy as np

BIG = 5 << 18           # bytes: above wetlite's shared-memory threshold (1 MiB), even for a strided view


def _dtypes():
    plain = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
             "float16", "float32", "float64", "longdouble", "complex64", "complex128", "clongdouble",
             ">i4", ">f8", ">c16", "<u2", ">U3", "<U7", "S5", "V8",
             "M8[ns]", "M8[D]", ">M8[s]", "m8[us]", "m8[h]", "M8"]
    table = {name: np.dtype(name) for name in plain}
    table["struct"] = np.dtype([("a", "<i4"), ("b", ">f8"), ("c", "U3"), ("d", "S2"), ("e", "M8[ms]")])
    table["aligned"] = np.dtype([("a", "u1"), ("b", "<f8"), ("c", "i2")], align=True)
    table["nested"] = np.dtype([("xy", "<f4", (2,)), ("inner", [("p", ">i2"), ("q", "?")]), ("m", "<c8", (2, 2))])
    table["titled"] = np.dtype({"names": ["a", "b"], "formats": ["<i4", "<f4"], "titles": ["first", None]})
    table["padded"] = np.dtype({"names": ["a", "b"], "formats": ["<i2", "<i2"], "offsets": [0, 4], "itemsize": 12})
    table["record"] = np.dtype((np.record, [("x", "<i8"), ("y", "<f8")]))
    return table


DTYPES = _dtypes()
NAMES = sorted(DTYPES)


PERIOD = 4099           # values repeat with this period (a prime: no alignment with the shapes)


def fill(out):
    """Deterministic values for every element of ``out`` (in place)."""
    dtype = out.dtype
    if dtype.names is not None:
        for name in dtype.names:
            fill(out[name])
        return out
    out[...] = np.resize(period(dtype), out.size).reshape(out.shape)
    return out


def period(dtype):
    """PERIOD values of a plain dtype."""
    k = np.arange(PERIOD)
    kind = dtype.kind
    if kind == "b":
        return k % 3 == 0
    if kind in "iu":
        return ((k * 7919 + 3) % (1 << min(8 * dtype.itemsize - 1, 40))).astype(dtype)
    if kind == "f":
        return (k / 7.0 - 11.25).astype(dtype)
    if kind == "c":
        return (k / 3.0 + 1j * (k % 5 - 2.5)).astype(dtype)
    if kind in "Mm" and "[" not in dtype.str:
        return np.array(["NaT"] * PERIOD, dtype.str)       # generic units hold NaT only
    if kind in "Mm":
        return (k * 37 - 50).astype(dtype.str.replace(">", "<")).astype(dtype)
    if kind == "S":
        return np.array([("%x" % (i * 31)).encode("ascii")[-dtype.itemsize:] for i in k], dtype)
    if kind == "U":
        return np.array([(u"\u00e9%d\u4e2d" % i)[:dtype.itemsize // 4] for i in k], dtype)
    values = np.zeros(PERIOD, dtype)                         # V: raw bytes
    values.view("u1")[...] = np.arange(PERIOD * dtype.itemsize) % 251
    return values


def make(name, layout, size):
    """One array: ``layout`` C, F, strided, reversed, permuted, 0d, empty, readonly; ``size`` small or big."""
    dtype = DTYPES[name]
    itemsize = max(dtype.itemsize, 1)
    if layout == "0d":
        return fill(np.zeros((), dtype))
    if layout == "empty":
        return np.zeros((0, 3), dtype)
    cols = 12
    rows = 5 if size == "small" else BIG // (cols * itemsize) + 1
    if layout == "permuted":
        base = fill(np.zeros((rows, 3, 4), dtype))
        return base.transpose(1, 0, 2)                      # neither C nor F, but no gaps
    if layout in ("strided", "reversed"):
        base = fill(np.zeros((2 * rows, 3 * cols), dtype))
        return base[::2, 1::3] if layout == "strided" else base[::-2, ::-3]
    array = fill(np.zeros((rows, cols), dtype, order="F" if layout == "F" else "C"))
    if layout == "readonly":
        array.flags.writeable = False
    return array


LAYOUTS = [("C", "small"), ("C", "big"), ("F", "small"), ("F", "big"), ("strided", "small"), ("strided", "big"),
           ("reversed", "small"), ("permuted", "small"), ("permuted", "big"), ("0d", "small"), ("empty", "small"),
           ("readonly", "small"), ("readonly", "big")]


def cases(name):
    """{label: array or scalar} for one dtype: every layout and size, and a scalar."""
    made = {"%s-%s" % (layout, size): make(name, layout, size) for layout, size in LAYOUTS}
    sample = make(name, "C", "small")
    made["scalar"] = sample[1, 2]
    made["scalar-0d"] = make(name, "0d", "small")[()]
    return made


def describe_dtype(dtype):
    return {"str": dtype.str, "descr": repr(dtype.descr), "itemsize": dtype.itemsize,
            "names": list(dtype.names) if dtype.names is not None else None,
            "fields": repr(sorted((k, v[0].str, v[1:]) for k, v in dtype.fields.items())) if dtype.fields else None,
            "aligned": bool(dtype.isalignedstruct), "record": dtype.type is np.record}


def values(x):
    """The values of array ``x`` as bytes, field by field: padding bytes
    (between fields, and in a long double's 16 bytes) are not values."""
    dtype = x.dtype
    if dtype.names is not None:
        return [(name, values(x[name])) for name in dtype.names]
    if dtype.kind in "fc" and dtype.itemsize > (8 if dtype.kind == "f" else 16):
        found = []
        for part in ([x.real, x.imag] if dtype.kind == "c" else [x]):
            as64 = part.astype(np.float64)
            found.append(as64.tobytes())
            found.append((part - as64).astype(np.float64).tobytes())       # the bits float64 lacks
        return found
    return np.ascontiguousarray(x).tobytes()


def describe(x):
    """Everything that must survive a crossing, as builtins (equal on any NumPy)."""
    if isinstance(x, np.ndarray):
        strides = x.strides
        return {"class": "ndarray" if type(x) is np.ndarray else type(x).__name__,
                "dtype": describe_dtype(x.dtype), "shape": list(x.shape),
                "c": bool(x.flags.c_contiguous), "f": bool(x.flags.f_contiguous),
                "axis order": sorted(range(x.ndim), key=lambda i: (-abs(strides[i]), i)) if x.size > 1 else None,
                "writeable": bool(x.flags.writeable), "values": values(x)}
    if isinstance(x, np.generic):
        return {"class": "scalar", "exact type": type(x) is x.dtype.type,
                "dtype": describe_dtype(x.dtype), "values": values(np.asarray(x))}
    return {"class": type(x).__name__, "value": x}


def describe_cases(made):
    return {label: describe(x) for label, x in made.items()}


def describe_sent(x):
    """What ``x`` must look like on the other side: a non-contiguous view
    arrives compact, in its own axis order (a copy with order "K")."""
    if isinstance(x, np.ndarray) and not (x.flags.c_contiguous or x.flags.f_contiguous):
        described = describe(x.copy(order="K"))
        described["writeable"] = bool(x.flags.writeable)
        return described
    return describe(x)


def describe_sent_cases(made):
    return {label: describe_sent(x) for label, x in made.items()}


def build(name):
    """The cases of one dtype, and their descriptions, made here (the worker's side)."""
    made = cases(name)
    return made, describe_sent_cases(made)


def longdouble_size():
    return np.dtype(np.longdouble).itemsize


def version():
    return np.__version__


def nested(x):
    """Arrays inside containers and objects, handed back as they came."""
    return x


def keep_view(array):
    """Keep only views of an argument (and a memoryview of one): the lent segment must stay ours."""
    KEPT.append((array[::2], memoryview(array[1:])))
    return float(array[::2].sum())


def kept_checksum():
    return [(float(view.sum()), float(np.frombuffer(mv, dtype=view.dtype).sum())) for view, mv in KEPT]


KEPT = []
