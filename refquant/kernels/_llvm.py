"""Small LLVM IR helpers shared by the Numba intrinsics of the CPU kernels.

Imported only by the kernel builders (on a kernel's first call): llvmlite is imported inside
each function, so importing this module loads nothing. Every helper emits the same instructions
the intrinsics would write inline; they exist so that each intrinsic reads as its arithmetic.
"""

from __future__ import annotations


def vector(element: str, lanes: int):
    """The llvmlite vector type of ``lanes`` elements: ``"i8"``, ``"i16"``, ``"i32"`` or ``"f32"``."""
    from llvmlite import ir
    scalar = ir.FloatType() if element == "f32" else ir.IntType(int(element[1:]))
    return ir.VectorType(scalar, lanes)


def i32_constant(values):
    """A constant ``<n x i32>`` (a shuffle mask, shift amounts or a mask of ``values``)."""
    from llvmlite import ir
    return ir.Constant(ir.VectorType(ir.IntType(32), len(values)), list(values))


def to_i64(builder, *values):
    """Each integer argument sign-extended to i64 (Numba passes ``intp`` or narrower ints)."""
    from llvmlite import ir
    i64 = ir.IntType(64)
    return tuple(builder.sext(v, i64) if v.type != i64 else v for v in values)


def i64_const(n: int):
    """The constant ``n`` as an i64 (offsets and counts)."""
    from llvmlite import ir
    return ir.Constant(ir.IntType(64), n)


def i32_const(n: int):
    """The constant ``n`` as an i32 (vector lane indices)."""
    from llvmlite import ir
    return ir.Constant(ir.IntType(32), n)


def data_pointers(context, builder, signature, args, indices):
    """The data pointers of the array arguments ``args[i]`` for ``i`` in ``indices``."""
    return [context.make_array(signature.args[i])(context, builder, args[i]).data for i in indices]


def broadcast(builder, scalar, vec_type):
    """``<n x T>`` with every lane ``scalar``: insert into lane 0, shuffle with an all-zero mask."""
    from llvmlite import ir
    vec = builder.insert_element(ir.Constant(vec_type, None), scalar, i32_const(0))
    return builder.shuffle_vector(vec, vec, i32_constant([0] * vec_type.count))


def load_vector(builder, base, offset, vec_type, align: int):
    """Load a ``vec_type`` from ``base + offset`` (element pointer arithmetic on ``base``)."""
    return builder.load(builder.bitcast(builder.gep(base, [offset]), vec_type.as_pointer()),
                        align=align)


def prefetch(builder, base, offset, locality: int = 2):
    """A read prefetch of the cache line at ``base + offset`` (element pointer arithmetic):
    ``llvm.prefetch`` with ``locality`` 0-3 (2: ``prefetcht1``, into L2 and below). A prefetch
    never faults, so the address may lie past the end of an array."""
    from llvmlite import ir
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    name = "llvm.prefetch.p0"
    fn = builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), name=name)
    addr = builder.bitcast(builder.gep(base, [offset]), i8p)
    builder.call(fn, [addr, ir.Constant(i32, 0), ir.Constant(i32, locality), ir.Constant(i32, 1)])
