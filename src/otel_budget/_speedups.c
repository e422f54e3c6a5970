/* The span hot path compiled: `processor.on_start`/`on_end` for the usual span and `tally.count_python`'s
 * per-query loop, the same steps as the Python in processor.py and tally.py, in the same order.
 *
 * Every case the Python handles but this does not (a new scope, a remote parent, a scope span ending, an
 * unsampled scope's span, a statement not in its dialect's cache, two layers of one round trip, a crossed
 * limit) is handed to the Python that does. `processor.py` installs it only when `_sdkspan.SHAPE_OK` (the
 * SDK's span has the private fields read here) and `OTEL_BUDGET_PURE_PYTHON` is not set; without a
 * compiler the package installs without it and runs the Python.
 *
 * Nothing here raises into the host: an `Exception` is handed to the `failed(message, exc)` callable given
 * to `configure` (it logs, rate-limited); anything else (KeyboardInterrupt, SystemExit) propagates.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <math.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Set once by `configure` (from processor.py and tally.py at import); owned references. */
static PyObject *k_bounded_type;   /* opentelemetry.attributes.BoundedAttributes */
static PyObject *k_client;         /* SpanKind.CLIENT */
static PyObject *k_scope_name;     /* names.SCOPE_NAME */
static PyObject *k_db_system_new, *k_db_system_old, *k_query_new, *k_query_old, *k_http_new, *k_http_old;
static PyObject *k_sql_caches;     /* normalize.SQL_CACHES: system -> {statement: key} */
static PyObject *k_not_query;      /* names.NOT_QUERY_SPANS */
static PyObject *k_other;          /* "other" */
static PyObject *one;              /* 1 */
static PyObject *no_system_limits; /* tally._NO_SYSTEM_LIMITS: the empty per-system limits most scopes share */
static PyObject *k_mongodb;        /* "mongodb" */
static PyObject *k_mongo_keys;     /* normalize.MONGO_KEYS: statement -> (operation, collection, key) */
static PyObject *k_op_new, *k_op_old, *k_coll_new, *k_coll_old; /* names.DB_OPERATION, names.DB_COLLECTION */
static Py_ssize_t mongo_keys_max = 0, cache_max_statement = 0;
static PyObject *f_statement_key, *f_layered, *f_failed, *f_on_start, *f_on_ending, *f_on_end;
static PyObject *k_globals;        /* processor.py's globals: `_ON_ENDING_FROZEN` is read there per call */
static PyObject *k_slot_db_queries, *k_slot_db_ns, *k_slot_repeats, *k_slot_repeated_ns, *k_slot_calls, *k_slot_calls_ns;
static Py_ssize_t i_db_queries, i_db_ns, i_repeats, i_repeated_ns;
static Py_ssize_t max_statements = 512, drain_every = 16;
static int configured = 0;

/* Interned attribute names. */
static PyObject *s_parent, *s_attributes, *s_dict, *s_context, *s_kind, *s_start_time, *s_end_time, *s_name;
static PyObject *s_spans, *s_closed, *s_open_spans, *s_rule_final, *s_adopt, *s_unrouted_child, *s_span_id;
static PyObject *s_held, *s_pending, *s_resolve, *s_drain, *s_counts, *s_limits, *s_systems, *s_statements;
static PyObject *s_lim_systems, *s_last_db, *s_last_db_start, *s_last_http, *s_last_http_start, *s_max_statement, *s_cross;
static PyObject *s_cross_system, *s_add, *s_on_ending_frozen, *s_public_attributes;

static const char MSG_ON_START[] = "otel-budget: on_start failed; this span is not counted";
static const char MSG_ON_END[] = "otel-budget: on_end failed; this span is not counted";
static const char MSG_COUNT[] = "otel-budget: could not count a span; it is left out of its scope's tally";

/* An `Exception` set now goes to `failed(message, exc)` and is cleared: 0. Anything else stays set: -1. */
static int
hand_over(const char *message)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *type, *exc, *traceback;
    PyErr_Fetch(&type, &exc, &traceback);
    PyErr_NormalizeException(&type, &exc, &traceback);
    if (traceback != NULL && exc != NULL)
        PyException_SetTraceback(exc, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
#endif
    PyObject *text = PyUnicode_FromString(message);
    PyObject *done = text != NULL ? PyObject_CallFunctionObjArgs(f_failed, text, exc, NULL) : NULL;
    Py_XDECREF(text);
    Py_XDECREF(exc);
    if (done == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return -1;
        PyErr_Clear(); /* the logger itself failed: nothing more to do */
    }
    Py_XDECREF(done);
    return 0;
}

/* An int as a long long (a digit loop, not PyLong_AsLongLong's _PyLong_AsByteArray for two digits);
 * `*error` set when it is not one or out of range (`what` names it). */
static long long
int_of(PyObject *value, const char *what, int *error)
{
    int overflow = 0;
    long long found = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow) {
        PyErr_Format(PyExc_OverflowError, "%s out of range", what);
        *error = 1;
    } else if (found == -1 && PyErr_Occurred()) {
        *error = 1;
    }
    return found;
}

/* `value or 0` for a span time: an int, or None before the span ended; anything else is a TypeError
 * (as the Python's arithmetic on it would raise), with `*error` set. */
static long long
time_of(PyObject *value, int *error)
{
    if (value == NULL || value == Py_None)
        return 0;
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "a span time is %.100s, not an int", Py_TYPE(value)->tp_name);
        *error = 1;
        return 0;
    }
    return int_of(value, "a span time", error);
}

/* ScopeTally's slots read and written at their offsets (what its member descriptors do) when the object
 * is a ScopeTally itself; anything else goes through getattr/setattr. Offsets are found by `configure`. */
static PyTypeObject *tally_type;
static Py_ssize_t o_closed = -1, o_open_spans = -1, o_rule_final = -1, o_span_id = -1, o_held = -1, o_pending = -1;
static Py_ssize_t o_counts = -1, o_limits = -1, o_systems = -1, o_statements = -1, o_lim_systems = -1;
static Py_ssize_t o_last_db = -1, o_last_db_start = -1, o_last_http = -1, o_last_http_start = -1, o_max_statement = -1;

static PyObject *
get_slot(PyObject *obj, PyObject *name, Py_ssize_t offset)
{
    if (offset >= 0 && Py_TYPE(obj) == tally_type) {
        PyObject *value = *(PyObject **)((char *)obj + offset);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttr(obj, name);
}

static int
set_slot(PyObject *obj, PyObject *name, Py_ssize_t offset, PyObject *value)
{
    if (offset >= 0 && Py_TYPE(obj) == tally_type) {
        Py_XSETREF(*(PyObject **)((char *)obj + offset), Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(obj, name, value);
}

#define SLOT(obj, field) get_slot(obj, s_##field, o_##field)
#define SET_SLOT(obj, field, value) set_slot(obj, s_##field, o_##field, value)

/* The slot is truthy: 1, 0, or -1 on error. */
static int
slot_true(PyObject *obj, PyObject *name, Py_ssize_t offset)
{
    PyObject *value = get_slot(obj, name, offset);
    if (value == NULL)
        return -1;
    int truth = value == Py_True ? 1 : value == Py_False || value == Py_None ? 0 : PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

#define SLOT_TRUE(obj, field) slot_true(obj, s_##field, o_##field)

/* The offset of ScopeTally's slot `name` (an object member), or -1. */
static Py_ssize_t
offset_of(PyTypeObject *type, PyObject *name)
{
    PyObject *descriptor = PyDict_GetItemWithError(type->tp_dict, name);
    if (descriptor == NULL || !Py_IS_TYPE(descriptor, &PyMemberDescr_Type))
        return -1;
    PyMemberDef *member = ((PyMemberDescrObject *)descriptor)->d_member;
    return member->type == T_OBJECT_EX && !(member->flags & READONLY) ? member->offset : -1;
}

/* attributes.get(a) or attributes.get(b), borrowed; NULL when neither is truthy (no error set) or on error. */
static PyObject *
first_truthy(PyObject *attributes, PyObject *a, PyObject *b, int *error)
{
    PyObject *value = PyDict_GetItemWithError(attributes, a);
    if (value == NULL && PyErr_Occurred()) {
        *error = 1;
        return NULL;
    }
    if (value != NULL) {
        int truth = PyUnicode_CheckExact(value) ? PyUnicode_GET_LENGTH(value) != 0 : PyObject_IsTrue(value);
        if (truth < 0) {
            *error = 1;
            return NULL;
        }
        if (truth)
            return value;
    }
    value = PyDict_GetItemWithError(attributes, b);
    if (value == NULL) {
        if (PyErr_Occurred())
            *error = 1;
        return NULL;
    }
    int truth = PyUnicode_CheckExact(value) ? PyUnicode_GET_LENGTH(value) != 0 : PyObject_IsTrue(value);
    if (truth < 0) {
        *error = 1;
        return NULL;
    }
    return truth ? value : NULL;
}

/* The span's attribute dict (`_attributes._dict`), new reference; NULL without error: not the SDK's. */
static PyObject *
attribute_dict(PyObject *span)
{
    PyObject *bounded = PyObject_GetAttr(span, s_attributes);
    if (bounded == NULL)
        return NULL;
    if ((PyObject *)Py_TYPE(bounded) != k_bounded_type) {
        Py_DECREF(bounded);
        return NULL;
    }
    PyObject *found = PyObject_GetAttr(bounded, s_dict);
    Py_DECREF(bounded);
    if (found != NULL && !PyDict_Check(found)) {
        Py_DECREF(found);
        return NULL;
    }
    return found;
}

/* A copy of `span.attributes or {}` as a dict (a span whose attributes are not the SDK's), new reference. */
static PyObject *
public_attributes(PyObject *span)
{
    PyObject *found = PyObject_GetAttr(span, s_public_attributes);
    if (found == NULL)
        return NULL;
    PyObject *copy = PyDict_New();
    int truth = copy != NULL ? PyObject_IsTrue(found) : -1;
    if (truth < 0 || (truth && PyDict_Merge(copy, found, 1) < 0)) {
        Py_XDECREF(copy);
        copy = NULL;
    }
    Py_DECREF(found);
    return copy;
}

/* A SpanContext's span id (`context[1]`), new reference: read as the tuple it is, without a generic
 * `PySequence_GetItem` (~770 instructions on this tuple subclass). */
static PyObject *
span_id_in(PyObject *context)
{
    if (PyTuple_Check(context) && PyTuple_GET_SIZE(context) > 1)
        return Py_NewRef(PyTuple_GET_ITEM(context, 1));
    return PySequence_GetItem(context, 1);
}

/* span._context[1], new reference. */
static PyObject *
span_id_of(PyObject *span)
{
    PyObject *context = PyObject_GetAttr(span, s_context);
    if (context == NULL)
        return NULL;
    PyObject *found = span_id_in(context);
    Py_DECREF(context);
    return found;
}

/* -- FastPath: the processor's on_start/_on_ending/on_end ------------------------------------------------ */
typedef struct {
    PyObject_HEAD
    PyObject *processor;
    PyObject *spans; /* processor._spans, the same dict for the processor's life (`_after_fork` clears it) */
} FastPath;

static int
FastPath_traverse(FastPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->processor);
    Py_VISIT(self->spans);
    return 0;
}

static int
FastPath_clear(FastPath *self)
{
    Py_CLEAR(self->processor);
    Py_CLEAR(self->spans);
    return 0;
}

static void
FastPath_dealloc(FastPath *self)
{
    PyObject_GC_UnTrack(self);
    FastPath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
FastPath_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *processor;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "_speedups.configure() has not been called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O:FastPath", &processor))
        return NULL;
    PyObject *spans = PyObject_GetAttr(processor, s_spans);
    if (spans == NULL)
        return NULL;
    if (!PyDict_CheckExact(spans)) {
        Py_DECREF(spans);
        PyErr_SetString(PyExc_TypeError, "FastPath: the processor's _spans is not a dict");
        return NULL;
    }
    FastPath *self = (FastPath *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(spans);
        return NULL;
    }
    Py_INCREF(processor);
    self->processor = processor;
    self->spans = spans;
    return (PyObject *)self;
}

/* The Python method for what this path does not handle. */
static PyObject *
delegate(PyObject *method, PyObject *processor, PyObject *span)
{
    return PyObject_CallFunctionObjArgs(method, processor, span, NULL);
}

/* 1: the usual child span was tallied (or belongs to no scope); 0: the Python must handle it; -1: error. */
static int
start_child(FastPath *self, PyObject *span)
{
    int result = -1;
    PyObject *parent = NULL, *attributes = NULL, *span_id = NULL, *spans = NULL, *open_spans = NULL;
    PyObject *owner;
    parent = PyObject_GetAttr(span, s_parent);
    if (parent == NULL)
        goto done;
    if (parent == Py_None || !PyTuple_Check(parent) || PyTuple_GET_SIZE(parent) < 3) {
        result = 0;
        goto done;
    }
    int remote = PyObject_IsTrue(PyTuple_GET_ITEM(parent, 2));
    if (remote != 0) {
        result = remote < 0 ? -1 : 0;
        goto done;
    }
    attributes = attribute_dict(span);
    if (attributes == NULL) {
        result = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    PyObject *scope_name = PyDict_GetItemWithError(attributes, k_scope_name);
    if (scope_name != NULL && scope_name != Py_None) {
        result = 0; /* an explicit scope inside this one */
        goto done;
    }
    if (PyErr_Occurred())
        goto done;
    span_id = span_id_of(span);
    if (span_id == NULL)
        goto done;
    spans = Py_NewRef(self->spans);
    owner = PyDict_GetItemWithError(spans, PyTuple_GET_ITEM(parent, 1));
    if (owner == NULL) {
        result = PyErr_Occurred() ? -1 : 1; /* not inside a scope */
        goto done;
    }
    Py_INCREF(owner);
    int closed = SLOT_TRUE(owner, closed);
    if (closed != 0) {
        result = closed < 0 ? -1 : 1;
        Py_DECREF(owner);
        goto done;
    }
    if (PyDict_SetItem(spans, span_id, owner) < 0) {
        Py_DECREF(owner);
        goto done;
    }
    open_spans = SLOT(owner, open_spans);
    if (open_spans == NULL) {
        Py_DECREF(owner);
        goto done;
    }
    if (PySet_Check(open_spans)) {
        if (PySet_Add(open_spans, span_id) < 0) {
            Py_DECREF(owner);
            goto done;
        }
    } else {
        PyObject *adopted = PyObject_CallMethodOneArg(owner, s_adopt, span_id);
        if (adopted == NULL) {
            Py_DECREF(owner);
            goto done;
        }
        Py_DECREF(adopted);
    }
    int rule_final = SLOT_TRUE(owner, rule_final);
    if (rule_final == 0) { /* a request whose route is not known yet */
        PyObject *done_ = PyObject_CallMethodObjArgs(self->processor, s_unrouted_child, owner, span_id, span, NULL);
        rule_final = done_ == NULL ? -1 : 1;
        Py_XDECREF(done_);
    }
    Py_DECREF(owner);
    result = rule_final < 0 ? -1 : 1;
done:
    Py_XDECREF(parent);
    Py_XDECREF(attributes);
    Py_XDECREF(span_id);
    Py_XDECREF(spans);
    Py_XDECREF(open_spans);
    return result;
}

static PyObject *
FastPath_on_start(FastPath *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "on_start() needs the span");
        return NULL;
    }
    int handled = start_child(self, args[0]);
    if (handled == 0)
        return delegate(f_on_start, self->processor, args[0]);
    if (handled < 0 && hand_over(MSG_ON_START) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
FastPath_on_ending(FastPath *self, PyObject *span)
{
    PyObject *frozen = PyDict_GetItemWithError(k_globals, s_on_ending_frozen);
    if (frozen == Py_True)
        Py_RETURN_NONE; /* SDK 1.45: the span is frozen already; `_EndScope` finished its scope */
    if (frozen == NULL && PyErr_Occurred())
        return NULL;
    return delegate(f_on_ending, self->processor, span);
}

/* 1: the usual CLIENT span was queued (or belongs to no scope); 0: the Python must handle it; -1: error. */
static int
end_client(FastPath *self, PyObject *span)
{
    int result = -1;
    PyObject *span_id = NULL, *kind = NULL, *spans = NULL, *owner = NULL, *scope_id = NULL, *held = NULL;
    PyObject *pending = NULL, *open_spans = NULL;
    span_id = span_id_of(span);
    if (span_id == NULL)
        goto done;
    spans = Py_NewRef(self->spans);
    owner = PyDict_GetItemWithError(spans, span_id);
    if (owner == NULL) {
        result = PyErr_Occurred() ? -1 : 1;
        goto done;
    }
    Py_INCREF(owner);
    kind = PyObject_GetAttr(span, s_kind);
    if (kind == NULL)
        goto done;
    if (kind != k_client) {
        result = 0;
        goto done;
    }
    int closed = SLOT_TRUE(owner, closed);
    if (closed != 0) {
        result = closed < 0 ? -1 : 0;
        goto done;
    }
    scope_id = SLOT(owner, span_id);
    if (scope_id == NULL)
        goto done;
    int same = PyObject_RichCompareBool(scope_id, span_id, Py_EQ);
    if (same != 0) { /* the scope span itself (a CLIENT scope span) */
        result = same < 0 ? -1 : 0;
        goto done;
    }
    held = SLOT(owner, held);
    if (held == NULL)
        goto done;
    if (held != Py_None) { /* a span of an unsampled scope */
        result = 0;
        goto done;
    }
    pending = SLOT(owner, pending);
    open_spans = pending != NULL ? SLOT(owner, open_spans) : NULL;
    if (open_spans == NULL)
        goto done;
    if (!PyList_CheckExact(pending) || !PyAnySet_Check(open_spans)) {
        result = 0; /* its scope was evicted while it ran */
        goto done;
    }
    if (PyDict_DelItem(spans, span_id) < 0 || PySet_Discard(open_spans, span_id) < 0 || PyList_Append(pending, span) < 0)
        goto done;
    if (PyList_GET_SIZE(pending) >= drain_every) { /* a batch is waiting: count it */
        int rule_final = SLOT_TRUE(owner, rule_final);
        if (rule_final < 0)
            goto done;
        if (!rule_final) {
            PyObject *end = PyObject_GetAttr(span, s_end_time);
            if (end == NULL)
                goto done;
            int error = 0;
            long long end_ns = time_of(end, &error);
            Py_DECREF(end);
            if (error)
                goto done;
            PyObject *at = PyLong_FromLongLong(end_ns);
            PyObject *resolved = at != NULL ? PyObject_CallMethodObjArgs(self->processor, s_resolve, owner, at, NULL) : NULL;
            Py_XDECREF(at);
            if (resolved == NULL)
                goto done;
            Py_DECREF(resolved);
        }
        PyObject *drained = PyObject_CallMethodNoArgs(owner, s_drain);
        if (drained == NULL)
            goto done;
        Py_DECREF(drained);
    }
    result = 1;
done:
    Py_XDECREF(span_id);
    Py_XDECREF(kind);
    Py_XDECREF(spans);
    Py_XDECREF(owner);
    Py_XDECREF(scope_id);
    Py_XDECREF(held);
    Py_XDECREF(pending);
    Py_XDECREF(open_spans);
    return result;
}

static PyObject *
FastPath_on_end(FastPath *self, PyObject *span)
{
    int handled = end_client(self, span);
    if (handled == 0)
        return delegate(f_on_end, self->processor, span);
    if (handled < 0 && hand_over(MSG_ON_END) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef FastPath_methods[] = {
    {"on_start", (PyCFunction)(void (*)(void))FastPath_on_start, METH_FASTCALL | METH_KEYWORDS,
     "BudgetSpanProcessor.on_start for the usual child span; the Python one for the rest."},
    {"_on_ending", (PyCFunction)FastPath_on_ending, METH_O, "Nothing to do while the SDK hands over frozen spans; else the Python one."},
    {"on_end", (PyCFunction)FastPath_on_end, METH_O,
     "BudgetSpanProcessor.on_end for the usual CLIENT span; the Python one for the rest."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "otel_budget._speedups.FastPath",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The compiled on_start/_on_ending/on_end of one BudgetSpanProcessor.",
    .tp_new = FastPath_new,
    .tp_traverse = (traverseproc)FastPath_traverse,
    .tp_clear = (inquiry)FastPath_clear,
    .tp_dealloc = (destructor)FastPath_dealloc,
    .tp_methods = FastPath_methods,
};

/* -- Pipeline: the provider's span processors called as one ------------------------------------------------
 *
 * `_pipeline.fuse` puts one of these in place of the processors of the provider's
 * SynchronousMultiSpanProcessor: the SDK's Python loop then makes one call per hook instead of one per
 * processor. Per member it calls the hook given (a bound method), skips the hooks given as None (a method
 * whose body is `pass`: the batch and simple processors' `on_start`/`_on_ending`), and runs a
 * `BudgetSpanProcessor`'s compiled path in place. Members are called in their order, as the SDK does, and
 * an exception from one propagates as it would from the SDK's loop (ours never raise: see `hand_over`). */
typedef struct {
    PyObject_HEAD
    PyObject *processors; /* tuple: the members, in the provider's order */
    PyObject *starts;     /* tuple: per member, its on_start (bound) or None: nothing to call */
    PyObject *endings;    /* tuple: the same for _on_ending */
    PyObject *ends;       /* tuple: the same for on_end */
    PyObject *fast;       /* tuple: per member, its FastPath (a compiled BudgetSpanProcessor) or None */
} Pipeline;

static int
Pipeline_traverse(Pipeline *self, visitproc visit, void *arg)
{
    Py_VISIT(self->processors);
    Py_VISIT(self->starts);
    Py_VISIT(self->endings);
    Py_VISIT(self->ends);
    Py_VISIT(self->fast);
    return 0;
}

static int
Pipeline_clear(Pipeline *self)
{
    Py_CLEAR(self->processors);
    Py_CLEAR(self->starts);
    Py_CLEAR(self->endings);
    Py_CLEAR(self->ends);
    Py_CLEAR(self->fast);
    return 0;
}

static void
Pipeline_dealloc(Pipeline *self)
{
    PyObject_GC_UnTrack(self);
    Pipeline_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Pipeline_init(Pipeline *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"processors", "starts", "endings", "ends", "fast", NULL};
    PyObject *processors, *starts, *endings, *ends, *fast;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O!O!O!:Pipeline", keywords, &PyTuple_Type, &processors,
                                     &PyTuple_Type, &starts, &PyTuple_Type, &endings, &PyTuple_Type, &ends,
                                     &PyTuple_Type, &fast))
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(processors);
    PyObject *columns[] = {starts, endings, ends, fast};
    for (int c = 0; c < 4; c++) {
        if (PyTuple_GET_SIZE(columns[c]) != n) {
            PyErr_SetString(PyExc_ValueError, "Pipeline: one hook and one fast path (or None) per processor");
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *path = PyTuple_GET_ITEM(fast, i);
        if (path != Py_None && !PyObject_TypeCheck(path, &FastPathType)) {
            PyErr_Format(PyExc_TypeError, "Pipeline: fast[%zd] is %.100s, not a FastPath or None", i,
                         Py_TYPE(path)->tp_name);
            return -1;
        }
    }
    Py_XSETREF(self->processors, Py_NewRef(processors));
    Py_XSETREF(self->starts, Py_NewRef(starts));
    Py_XSETREF(self->endings, Py_NewRef(endings));
    Py_XSETREF(self->ends, Py_NewRef(ends));
    Py_XSETREF(self->fast, Py_NewRef(fast));
    return 0;
}

/* Not yet initialised (a subclass's __init__ that did not call ours): nothing to call. */
#define PIPELINE_READY(self) ((self)->processors != NULL && (self)->fast != NULL)

static PyObject *
Pipeline_on_start(Pipeline *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    if (!PIPELINE_READY(self))
        Py_RETURN_NONE;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t n = PyTuple_GET_SIZE(self->processors);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *path = PyTuple_GET_ITEM(self->fast, i);
        PyObject *result;
        if (path != Py_None)
            result = FastPath_on_start((FastPath *)path, args, nargs, kwnames);
        else {
            PyObject *hook = PyTuple_GET_ITEM(self->starts, i);
            if (hook == Py_None)
                continue;
            result = PyObject_Vectorcall(hook, args, nargs, kwnames);
        }
        if (result == NULL)
            return NULL;
        Py_DECREF(result);
    }
    Py_RETURN_NONE;
}

/* _on_ending and on_end: one argument, the span. */
static PyObject *
pipeline_each(Pipeline *self, PyObject *hooks, PyObject *(*compiled)(FastPath *, PyObject *), PyObject *span)
{
    Py_ssize_t n = PyTuple_GET_SIZE(self->processors);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *path = PyTuple_GET_ITEM(self->fast, i);
        PyObject *result;
        if (path != Py_None)
            result = compiled((FastPath *)path, span);
        else {
            PyObject *hook = PyTuple_GET_ITEM(hooks, i);
            if (hook == Py_None)
                continue;
            result = PyObject_Vectorcall(hook, &span, 1, NULL);
        }
        if (result == NULL)
            return NULL;
        Py_DECREF(result);
    }
    Py_RETURN_NONE;
}

static PyObject *
Pipeline_on_ending(Pipeline *self, PyObject *span)
{
    if (!PIPELINE_READY(self))
        Py_RETURN_NONE;
    return pipeline_each(self, self->endings, FastPath_on_ending, span);
}

static PyObject *
Pipeline_on_end(Pipeline *self, PyObject *span)
{
    if (!PIPELINE_READY(self))
        Py_RETURN_NONE;
    return pipeline_each(self, self->ends, FastPath_on_end, span);
}

static PyMethodDef Pipeline_methods[] = {
    {"on_start", (PyCFunction)(void (*)(void))Pipeline_on_start, METH_FASTCALL | METH_KEYWORDS,
     "Every member's on_start, in order (the no-op ones skipped)."},
    {"_on_ending", (PyCFunction)Pipeline_on_ending, METH_O, "Every member's _on_ending, in order (the no-op ones skipped)."},
    {"on_end", (PyCFunction)Pipeline_on_end, METH_O, "Every member's on_end, in order (the no-op ones skipped)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Pipeline_members[] = {
    {"processors", T_OBJECT, offsetof(Pipeline, processors), READONLY, "The members, in the provider's order."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject PipelineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "otel_budget._speedups.Pipeline",
    .tp_basicsize = sizeof(Pipeline),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A provider's span processors called as one (see _pipeline.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pipeline_init,
    .tp_traverse = (traverseproc)Pipeline_traverse,
    .tp_clear = (inquiry)Pipeline_clear,
    .tp_dealloc = (destructor)Pipeline_dealloc,
    .tp_methods = Pipeline_methods,
    .tp_members = Pipeline_members,
};

/* -- count(tally, batch): tally.count_python's loop ---------------------------------------------------- */
typedef struct {
    long long queries, db_ns, max_repeat, repeated_ns, key_ns;
    double lim_queries, lim_db_ns, lim_repeat, lim_repeated_ns;
} Totals;

static double
limit_at(PyObject *limits, Py_ssize_t slot, int *error)
{
    PyObject *value = PyTuple_CheckExact(limits) && slot < PyTuple_GET_SIZE(limits) ? Py_NewRef(PyTuple_GET_ITEM(limits, slot))
                      : PyList_CheckExact(limits) && slot < PyList_GET_SIZE(limits) ? Py_NewRef(PyList_GET_ITEM(limits, slot))
                                                                                      : PySequence_GetItem(limits, slot);
    if (value == NULL) {
        *error = 1;
        return 0;
    }
    double found = PyFloat_AsDouble(value);
    Py_DECREF(value);
    if (found == -1.0 && PyErr_Occurred())
        *error = 1;
    return found;
}

static long long
count_at(PyObject *counts, Py_ssize_t slot, int *error)
{
    PyObject *value = PyList_GetItem(counts, slot);
    return value != NULL ? int_of(value, "a count", error) : (*error = 1, -1);
}

static int
set_count(PyObject *counts, Py_ssize_t slot, long long value)
{
    PyObject *item = PyLong_FromLongLong(value);
    return item != NULL ? PyList_SetItem(counts, slot, item) : -1; /* steals `item` */
}

/* tally.<method>(slot, at_ns) or (slot, amount, at_ns); -1 on error. */
static int
call_tally(PyObject *tally, PyObject *method, PyObject *slot, long long amount, long long at_ns, int with_amount)
{
    PyObject *at = PyLong_FromLongLong(at_ns);
    PyObject *how_much = with_amount ? PyLong_FromLongLong(amount) : NULL;
    PyObject *done = NULL;
    if (at != NULL && (!with_amount || how_much != NULL))
        done = with_amount ? PyObject_CallMethodObjArgs(tally, method, slot, how_much, at, NULL)
                           : PyObject_CallMethodObjArgs(tally, method, slot, at, NULL);
    Py_XDECREF(at);
    Py_XDECREF(how_much);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

/* tally.layered_spans(span, last): `span` is an outer layer of `last`, the span counted before it; 1, 0, or -1. */
static int
layered(PyObject *span, PyObject *last)
{
    PyObject *found = PyObject_CallFunctionObjArgs(f_layered, span, last, NULL);
    if (found == NULL)
        return -1;
    int truth = PyObject_IsTrue(found);
    Py_DECREF(found);
    return truth;
}

/* The start of the last span counted (its `last_*_start` slot, `None` before it started) is at or after
 * `start_ns`: the span now counted may be an outer layer of it. 1, 0, or -1. */
static int
started_before_last(PyObject *last, PyObject *last_start, long long start_ns)
{
    if (last == Py_None)
        return 0;
    int error = 0;
    long long found = time_of(last_start, &error);
    return error ? -1 : start_ns <= found;
}

/* statements[key] = [executions, ns]: one more execution of `ns` (a new key only while there is room);
 * the executions, or -1 on error. `*key_ns` is the statement's time when it is remembered. */
static long long
count_statement(PyObject *statements, PyObject *key, long long ns, long long *key_ns)
{
    PyObject *seen = PyDict_GetItemWithError(statements, key);
    if (seen == NULL) {
        if (PyErr_Occurred())
            return -1;
        if (PyDict_GET_SIZE(statements) >= max_statements)
            return 1;
        PyObject *entry = PyList_New(2);
        PyObject *time = entry != NULL ? PyLong_FromLongLong(ns) : NULL;
        if (time == NULL) {
            Py_XDECREF(entry);
            return -1;
        }
        PyList_SET_ITEM(entry, 0, Py_NewRef(one));
        PyList_SET_ITEM(entry, 1, time);
        int failed = PyDict_SetItem(statements, key, entry);
        Py_DECREF(entry);
        if (failed < 0)
            return -1;
        *key_ns = ns;
        return 1;
    }
    if (!PyList_CheckExact(seen) || PyList_GET_SIZE(seen) != 2) {
        PyErr_SetString(PyExc_TypeError, "a statement's tally is not [executions, ns]");
        return -1;
    }
    int error = 0;
    long long repeats = count_at(seen, 0, &error) + 1, total = count_at(seen, 1, &error) + ns;
    if (error || set_count(seen, 0, repeats) < 0 || set_count(seen, 1, total) < 0)
        return -1;
    *key_ns = total;
    return repeats;
}

/* per_system[0] += 1, per_system[1] += ns (made [0, 0] first); borrowed per_system, NULL on error. */
static PyObject *
count_system(PyObject *systems, PyObject *system, long long ns)
{
    PyObject *per_system = PyDict_GetItemWithError(systems, system);
    if (per_system == NULL) {
        if (PyErr_Occurred())
            return NULL;
        per_system = Py_BuildValue("[ii]", 0, 0);
        if (per_system == NULL || PyDict_SetItem(systems, system, per_system) < 0) {
            Py_XDECREF(per_system);
            return NULL;
        }
        Py_DECREF(per_system); /* the dict holds it */
    }
    if (!PyList_CheckExact(per_system) || PyList_GET_SIZE(per_system) < 2) {
        PyErr_SetString(PyExc_TypeError, "a DB system's tally is not [queries, ns]");
        return NULL;
    }
    int error = 0;
    long long queries = count_at(per_system, 0, &error), time = count_at(per_system, 1, &error);
    if (error || set_count(per_system, 0, queries + 1) < 0 || set_count(per_system, 1, time + ns) < 0)
        return NULL;
    return per_system;
}

/* Two attribute values (borrowed, NULL when absent or falsy) are the same: 1, 0, or -1. */
static int
same_value(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    if (a == NULL || b == NULL)
        return 0;
    return PyObject_RichCompareBool(a, b, Py_EQ);
}

/* A MongoDB span's key from `k_mongo_keys` when its statement, operation and collection are those it was
 * made for: a new reference; NULL without error when it is not there (then `*operation` and `*collection`
 * are the span's, borrowed, for `remember_mongo`). */
static PyObject *
cached_mongo_key(PyObject *attributes, PyObject *statement, PyObject **operation, PyObject **collection, int *error)
{
    *operation = first_truthy(attributes, k_op_new, k_op_old, error);
    *collection = *error ? NULL : first_truthy(attributes, k_coll_new, k_coll_old, error);
    if (*error)
        return NULL;
    PyObject *entry = PyDict_GetItemWithError(k_mongo_keys, statement);
    if (entry == NULL) {
        if (PyErr_Occurred())
            *error = 1;
        return NULL;
    }
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3)
        return NULL;
    Py_INCREF(entry);
    PyObject *op = PyTuple_GET_ITEM(entry, 0), *coll = PyTuple_GET_ITEM(entry, 1);
    int same = same_value(op == Py_None ? NULL : op, *operation);
    if (same > 0)
        same = same_value(coll == Py_None ? NULL : coll, *collection);
    PyObject *key = same > 0 ? Py_NewRef(PyTuple_GET_ITEM(entry, 2)) : NULL;
    Py_DECREF(entry);
    if (same < 0)
        *error = 1;
    return key;
}

/* Remember `key` for this statement, operation and collection while the cache has room (`_remember`'s
 * bounds: normalize.py clears it with the others); -1 on error. */
static int
remember_mongo(PyObject *statement, PyObject *operation, PyObject *collection, PyObject *key)
{
    if (PyDict_GET_SIZE(k_mongo_keys) >= mongo_keys_max || PyUnicode_GET_LENGTH(statement) > cache_max_statement ||
        !PyUnicode_CheckExact(key))
        return 0;
    PyObject *entry = PyTuple_Pack(3, operation != NULL ? operation : Py_None, collection != NULL ? collection : Py_None, key);
    int failed = entry == NULL || PyDict_SetItem(k_mongo_keys, statement, entry) < 0;
    Py_XDECREF(entry);
    return failed ? -1 : 0;
}

/* The statement key of a DB span (borrowed from the dialect cache, or new from statement_key): new ref. */
static PyObject *
key_of(PyObject *system, PyObject *attributes, PyObject *name, int *error)
{
    PyObject *statement = first_truthy(attributes, k_query_new, k_query_old, error);
    PyObject *operation = NULL, *collection = NULL;
    int mongo = 0;
    if (*error)
        return NULL;
    if (statement != NULL && PyUnicode_CheckExact(statement)) {
        PyObject *cache = PyDict_GetItemWithError(k_sql_caches, system);
        if (cache != NULL && PyDict_Check(cache)) {
            PyObject *key = PyDict_GetItemWithError(cache, statement);
            if (key != NULL && key != Py_None) {
                Py_INCREF(key);
                return key;
            }
        }
        if (PyErr_Occurred()) {
            *error = 1;
            return NULL;
        }
        /* MongoDB: its text, operation and collection make the key (`statement_key`); a text that starts with a
         * space would take the span's name as its operation, so it is not cached. */
        if (cache == NULL && k_mongo_keys != NULL && PyUnicode_READ_CHAR(statement, 0) != ' ') {
            mongo = PyUnicode_Compare(system, k_mongodb) == 0;
            if (mongo) {
                PyObject *key = cached_mongo_key(attributes, statement, &operation, &collection, error);
                if (key != NULL || *error)
                    return key;
            } else if (PyErr_Occurred()) {
                *error = 1;
                return NULL;
            }
        }
    }
    if (mongo) { /* held across the call into Python: borrowed from the span's attributes */
        Py_INCREF(statement);
        Py_XINCREF(operation);
        Py_XINCREF(collection);
    }
    PyObject *key = PyObject_CallFunctionObjArgs(f_statement_key, system, attributes, name, NULL);
    if (key == NULL)
        *error = 1;
    else if (mongo && remember_mongo(statement, operation, collection, key) < 0) {
        Py_CLEAR(key);
        *error = 1;
    }
    if (mongo) {
        Py_DECREF(statement);
        Py_XDECREF(operation);
        Py_XDECREF(collection);
    }
    return key;
}

static int
cross(PyObject *tally, PyObject *slot, long long at_ns, double *limit)
{
    *limit = Py_HUGE_VAL;
    return call_tally(tally, s_cross, slot, 0, at_ns, 0);
}

/* One HTTP client span (no DB system): counted as an external call unless it is an outer layer. */
static int
count_http(PyObject *tally, PyObject *span, PyObject *start, long long start_ns, long long end_ns)
{
    PyObject *last = SLOT(tally, last_http);
    PyObject *last_start = last != NULL ? SLOT(tally, last_http_start) : NULL;
    int outer = last_start == NULL ? -1 : started_before_last(last, last_start, start_ns);
    if (outer > 0)
        outer = layered(span, last);
    Py_XDECREF(last);
    Py_XDECREF(last_start);
    if (outer < 0 || SET_SLOT(tally, last_http, span) < 0 || SET_SLOT(tally, last_http_start, start) < 0)
        return -1;
    if (outer)
        return 0; /* an outer layer of the call just counted (requests over urllib3) */
    if (call_tally(tally, s_add, k_slot_calls, 1, end_ns, 1) < 0)
        return -1;
    return call_tally(tally, s_add, k_slot_calls_ns, end_ns - start_ns, end_ns, 1);
}

/* `obj` as a double when that is exact (a float, or an int within 2**53): then comparing doubles is what
 * Python's exact int/float comparison gives. 0: not such a number (compared through Python). */
static int
exact_double(PyObject *obj, double *out)
{
    if (PyFloat_CheckExact(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 1;
    }
    if (PyLong_CheckExact(obj)) {
        int overflow = 0;
        long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow || value > (1LL << 53) || value < -(1LL << 53))
            return 0;
        *out = (double)value;
        return 1;
    }
    return 0;
}

/* A per-system limit (an int from the budgets file, or a float: `inf`, ns) as an exact double: 1, or 0 for
 * NaN, an int too big to be exact, or anything else (the caller then leaves the comparison to the Python). */
static int
limit_of(PyObject *limit, double *out)
{
    return exact_double(limit, out) && !isnan(*out);
}

/* The last DB span counted, as `count` carries it from span to span (written back to the tally at the end). */
typedef struct {
    PyObject *span;  /* owned; Py_None before the first */
    PyObject *start; /* owned; its `_start_time` */
} Last;

/* One span of the batch; 0 on success or skip, -1 on an error that propagates. */
static int
count_span(PyObject *tally, PyObject *span, Totals *t, PyObject *systems, PyObject *statements, PyObject *lim_systems,
           Last *last_db)
{
    int error = 0;
    PyObject *attributes = NULL, *start = NULL, *end = NULL, *name = NULL, *key = NULL;
    PyObject *system;
    long long start_ns, end_ns, ns;
    /* The guarded part, as in the Python's `try`: an error here leaves this span out, logged. */
    attributes = attribute_dict(span);
    if (attributes == NULL && !PyErr_Occurred())
        attributes = public_attributes(span); /* as `_sdkspan.counted`: `span.attributes or EMPTY` */
    if (attributes == NULL)
        goto guarded_error;
    start = PyObject_GetAttr(span, s_start_time);
    end = start != NULL ? PyObject_GetAttr(span, s_end_time) : NULL;
    name = end != NULL ? PyObject_GetAttr(span, s_name) : NULL;
    if (name == NULL)
        goto guarded_error;
    end_ns = time_of(end, &error);
    start_ns = error ? 0 : time_of(start, &error);
    if (error)
        goto guarded_error;
    if (!start_ns)
        start_ns = end_ns;
    ns = end_ns - start_ns;
    system = first_truthy(attributes, k_db_system_new, k_db_system_old, &error);
    if (error)
        goto guarded_error;
    if (system == NULL) {
        int http = PyDict_Contains(attributes, k_http_new);
        if (http == 0)
            http = PyDict_Contains(attributes, k_http_old);
        if (http < 0 || (http && count_http(tally, span, start, start_ns, end_ns) < 0))
            goto guarded_error;
        goto skip;
    }
    /* One round trip, one count: a DB span around the one just counted is an outer layer. */
    int outer = started_before_last(last_db->span, last_db->start, start_ns);
    if (outer > 0)
        outer = layered(span, last_db->span);
    if (outer < 0)
        goto guarded_error;
    Py_SETREF(last_db->span, Py_NewRef(span));
    Py_SETREF(last_db->start, Py_NewRef(start));
    if (outer)
        goto skip;
    int not_query = PySet_Contains(k_not_query, name);
    if (not_query < 0)
        goto guarded_error;
    if (not_query)
        goto skip; /* a connection or pool span, not a statement */
    if (!PyUnicode_CheckExact(system))
        system = k_other;
    Py_INCREF(system);
    key = key_of(system, attributes, name, &error);
    if (error) {
        Py_DECREF(system);
        goto guarded_error;
    }
    /* Counted: from here an error propagates (as in the Python, outside its `try`). */
    int failed = -1;
    t->queries += 1;
    t->db_ns += ns;
    PyObject *per_system = count_system(systems, system, ns);
    if (per_system == NULL)
        goto counted;
    Py_INCREF(per_system);
    long long repeats = count_statement(statements, key, ns, &t->key_ns);
    if (repeats < 0)
        goto counted_system;
    /* The most repeated statement changes only when a statement's count goes past the highest. */
    if (repeats > t->max_repeat) {
        t->max_repeat = repeats;
        if (SET_SLOT(tally, max_statement, key) < 0)
            goto counted_system;
        t->repeated_ns = t->key_ns;
        if ((double)t->repeated_ns > t->lim_repeated_ns && cross(tally, k_slot_repeated_ns, end_ns, &t->lim_repeated_ns) < 0)
            goto counted_system;
    }
    if ((double)t->queries > t->lim_queries && cross(tally, k_slot_db_queries, end_ns, &t->lim_queries) < 0)
        goto counted_system;
    if ((double)t->db_ns > t->lim_db_ns && cross(tally, k_slot_db_ns, end_ns, &t->lim_db_ns) < 0)
        goto counted_system;
    if ((double)repeats > t->lim_repeat && cross(tally, k_slot_repeats, end_ns, &t->lim_repeat) < 0)
        goto counted_system;
    int any_budgeted = lim_systems == no_system_limits ? 0 : PyObject_IsTrue(lim_systems);
    if (any_budgeted < 0)
        goto counted_system;
    if (any_budgeted) {
        int budgeted = PySequence_Contains(lim_systems, system);
        if (budgeted < 0)
            goto counted_system;
        if (budgeted) { /* only when a per-system limit is over: `_cross_system` would do nothing else */
            PyObject *pair = PyObject_GetItem(lim_systems, system);
            if (pair == NULL)
                goto counted_system;
            int over = 1; /* anything unexpected: let the Python decide */
            double limit_queries, limit_ns;
            if (PyTuple_CheckExact(pair) && PyTuple_GET_SIZE(pair) == 2 &&
                limit_of(PyTuple_GET_ITEM(pair, 0), &limit_queries) && limit_of(PyTuple_GET_ITEM(pair, 1), &limit_ns)) {
                int error = 0;
                long long queries = count_at(per_system, 0, &error), time = count_at(per_system, 1, &error);
                if (error) {
                    Py_DECREF(pair);
                    goto counted_system;
                }
                over = (double)queries > limit_queries || (double)time > limit_ns;
            }
            Py_DECREF(pair);
            budgeted = over;
        }
        if (budgeted) {
            PyObject *at = PyLong_FromLongLong(end_ns);
            PyObject *done = at != NULL ? PyObject_CallMethodObjArgs(tally, s_cross_system, system, per_system, at, NULL) : NULL;
            Py_XDECREF(at);
            if (done == NULL)
                goto counted_system;
            Py_DECREF(done);
        }
    }
    failed = 0;
counted_system:
    Py_DECREF(per_system);
counted:
    Py_DECREF(system);
    Py_XDECREF(attributes);
    Py_XDECREF(start);
    Py_XDECREF(end);
    Py_XDECREF(name);
    Py_XDECREF(key);
    return failed;
guarded_error:
    Py_XDECREF(attributes);
    Py_XDECREF(start);
    Py_XDECREF(end);
    Py_XDECREF(name);
    Py_XDECREF(key);
    return hand_over(MSG_COUNT);
skip:
    Py_XDECREF(attributes);
    Py_XDECREF(start);
    Py_XDECREF(end);
    Py_XDECREF(name);
    return 0;
}

static PyObject *
speedups_count(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "count(tally, batch: list)");
        return NULL;
    }
    PyObject *tally = args[0], *batch = args[1];
    PyObject *counts = NULL, *limits = NULL, *systems = NULL, *statements = NULL, *lim_systems = NULL, *result = NULL;
    Last last_db = {NULL, NULL};
    int error = 0;
    Totals t = {0};
    counts = SLOT(tally, counts);
    limits = counts != NULL ? SLOT(tally, limits) : NULL;
    systems = limits != NULL ? SLOT(tally, systems) : NULL;
    statements = systems != NULL ? SLOT(tally, statements) : NULL;
    lim_systems = statements != NULL ? SLOT(tally, lim_systems) : NULL;
    last_db.span = lim_systems != NULL ? SLOT(tally, last_db) : NULL;
    last_db.start = last_db.span != NULL ? SLOT(tally, last_db_start) : NULL;
    if (last_db.start == NULL)
        goto done;
    if (!PyList_CheckExact(counts) || !PyDict_CheckExact(systems) || !PyDict_CheckExact(statements)) {
        PyErr_SetString(PyExc_TypeError, "not a ScopeTally");
        goto done;
    }
    t.queries = count_at(counts, i_db_queries, &error);
    t.db_ns = count_at(counts, i_db_ns, &error);
    t.max_repeat = count_at(counts, i_repeats, &error);
    t.repeated_ns = count_at(counts, i_repeated_ns, &error);
    t.lim_queries = limit_at(limits, i_db_queries, &error);
    t.lim_db_ns = limit_at(limits, i_db_ns, &error);
    t.lim_repeat = limit_at(limits, i_repeats, &error);
    t.lim_repeated_ns = limit_at(limits, i_repeated_ns, &error);
    if (error)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(batch); i++) {
        PyObject *span = PyList_GET_ITEM(batch, i);
        Py_INCREF(span);
        int failed = count_span(tally, span, &t, systems, statements, lim_systems, &last_db);
        Py_DECREF(span);
        if (failed < 0)
            goto done;
    }
    if (set_count(counts, i_db_queries, t.queries) < 0 || set_count(counts, i_db_ns, t.db_ns) < 0 ||
        set_count(counts, i_repeats, t.max_repeat) < 0 || set_count(counts, i_repeated_ns, t.repeated_ns) < 0 ||
        SET_SLOT(tally, last_db, last_db.span) < 0 || SET_SLOT(tally, last_db_start, last_db.start) < 0)
        goto done;
    result = Py_None;
    Py_INCREF(result);
done:
    Py_XDECREF(counts);
    Py_XDECREF(limits);
    Py_XDECREF(systems);
    Py_XDECREF(statements);
    Py_XDECREF(lim_systems);
    Py_XDECREF(last_db.span);
    Py_XDECREF(last_db.start);
    return result;
}

/* -- probes: RSS from /proc/self/statm, this thread's CPU time and the peak RSS ---------------------------- */
/* `_probes.rss_bytes` and `cpu_and_peak` without ctypes' and struct_rusage's overhead (~11 000 and ~4 000
 * instructions a call): the same reads, the same values, the GIL kept (see _probes.py for why). */
static int rss_fd = -1;
static long page_size = 4096;
static PyObject *f_rss_slowly; /* _probes._rss_slowly: the first read, after fork, or when this one fails */

static PyObject *
speedups_rss_bytes(PyObject *module, PyObject *unused)
{
    if (rss_fd >= 0) {
        char buffer[64];
        ssize_t size = pread(rss_fd, buffer, sizeof(buffer) - 1, 0);
        if (size > 0) {
            buffer[size] = '\0';
            char *end;
            strtoll(buffer, &end, 10); /* total program size; the second field is the resident set */
            long long resident = strtoll(end, NULL, 10);
            if (end != buffer && resident > 0)
                return PyLong_FromLongLong(resident * page_size);
        }
    }
    if (f_rss_slowly == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_speedups.configure_probes() has not been called");
        return NULL;
    }
    return PyObject_CallNoArgs(f_rss_slowly);
}

static PyObject *
speedups_rss_open(PyObject *module, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i:rss_open", &fd))
        return NULL;
    rss_fd = fd; /* _probes owns the descriptor (opens, closes and resets it after fork); -1: none */
    Py_RETURN_NONE;
}

#ifdef RUSAGE_THREAD
static PyObject *
speedups_cpu_and_peak(PyObject *module, PyObject *unused)
{
    struct rusage usage;
    if (getrusage(RUSAGE_THREAD, &usage) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    /* As `round((usage.ru_utime + usage.ru_stime) * 1e6) * 1000` reads Python's struct_rusage floats. */
    double user = (double)usage.ru_utime.tv_sec + usage.ru_utime.tv_usec * 0.000001;
    double system = (double)usage.ru_stime.tv_sec + usage.ru_stime.tv_usec * 0.000001;
    long long cpu_ns = (long long)nearbyint((user + system) * 1e6) * 1000;
    return Py_BuildValue("(LL)", cpu_ns, (long long)usage.ru_maxrss * 1024);
}
#endif

static PyObject *
speedups_configure_probes(PyObject *module, PyObject *rss_slowly)
{
    Py_INCREF(rss_slowly);
    Py_XSETREF(f_rss_slowly, rss_slowly);
    long found = sysconf(_SC_PAGE_SIZE);
    if (found > 0)
        page_size = found;
    Py_RETURN_NONE;
}

/* -- configure ------------------------------------------------------------------------------------------ */
static int
take(PyObject *config, const char *key, PyObject **into)
{
    PyObject *value = PyDict_GetItemString(config, key);
    if (value == NULL) {
        PyErr_Format(PyExc_KeyError, "configure: %s missing", key);
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(*into, value);
    return 0;
}

static int
take_slot(PyObject *config, const char *key, PyObject **into, Py_ssize_t *index)
{
    if (take(config, key, into) < 0)
        return -1;
    Py_ssize_t found = PyLong_AsSsize_t(*into);
    if (found == -1 && PyErr_Occurred())
        return -1;
    if (index != NULL)
        *index = found;
    return 0;
}

static PyObject *
speedups_configure(PyObject *module, PyObject *config)
{
    if (!PyDict_Check(config)) {
        PyErr_SetString(PyExc_TypeError, "configure(dict)");
        return NULL;
    }
    PyObject *size = NULL;
    if (take(config, "bounded_type", &k_bounded_type) < 0 || take(config, "client", &k_client) < 0 ||
        take(config, "scope_name", &k_scope_name) < 0 || take(config, "db_system_new", &k_db_system_new) < 0 ||
        take(config, "db_system_old", &k_db_system_old) < 0 || take(config, "query_new", &k_query_new) < 0 ||
        take(config, "query_old", &k_query_old) < 0 || take(config, "http_new", &k_http_new) < 0 ||
        take(config, "http_old", &k_http_old) < 0 || take(config, "sql_caches", &k_sql_caches) < 0 ||
        take(config, "not_query", &k_not_query) < 0 || take(config, "statement_key", &f_statement_key) < 0 ||
        take(config, "layered", &f_layered) < 0 || take(config, "failed", &f_failed) < 0 ||
        take(config, "on_start", &f_on_start) < 0 || take(config, "on_end", &f_on_end) < 0 ||
        take(config, "on_ending", &f_on_ending) < 0 || take(config, "globals", &k_globals) < 0 ||
        take(config, "no_system_limits", &no_system_limits) < 0 || take(config, "mongo_keys", &k_mongo_keys) < 0 ||
        take(config, "operation_new", &k_op_new) < 0 || take(config, "operation_old", &k_op_old) < 0 ||
        take(config, "collection_new", &k_coll_new) < 0 || take(config, "collection_old", &k_coll_old) < 0 ||
        take_slot(config, "db_queries", &k_slot_db_queries, &i_db_queries) < 0 ||
        take_slot(config, "db_ns", &k_slot_db_ns, &i_db_ns) < 0 ||
        take_slot(config, "repeats", &k_slot_repeats, &i_repeats) < 0 ||
        take_slot(config, "repeated_ns", &k_slot_repeated_ns, &i_repeated_ns) < 0 ||
        take_slot(config, "external_calls", &k_slot_calls, NULL) < 0 ||
        take_slot(config, "external_ns", &k_slot_calls_ns, NULL) < 0 || take(config, "max_statements", &size) < 0)
        goto failed;
    max_statements = PyLong_AsSsize_t(size);
    Py_CLEAR(size);
    if (take(config, "drain_every", &size) < 0)
        goto failed;
    drain_every = PyLong_AsSsize_t(size);
    Py_CLEAR(size);
    if (take(config, "mongo_keys_max", &size) < 0)
        goto failed;
    mongo_keys_max = PyLong_AsSsize_t(size);
    Py_CLEAR(size);
    if (take(config, "cache_max_statement", &size) < 0)
        goto failed;
    cache_max_statement = PyLong_AsSsize_t(size);
    Py_CLEAR(size);
    if (PyErr_Occurred())
        goto failed;
    if (!PyDict_Check(k_sql_caches) || !PyAnySet_Check(k_not_query) || !PyDict_Check(k_globals) ||
        !PyDict_CheckExact(k_mongo_keys)) {
        PyErr_SetString(PyExc_TypeError, "configure: sql_caches must be a dict, not_query a set");
        goto failed;
    }
    PyObject *type = PyDict_GetItemString(config, "tally_type");
    if (type == NULL || !PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "configure: tally_type must be ScopeTally");
        goto failed;
    }
    Py_INCREF(type);
    Py_XSETREF(tally_type, (PyTypeObject *)type);
    o_closed = offset_of(tally_type, s_closed);
    o_open_spans = offset_of(tally_type, s_open_spans);
    o_rule_final = offset_of(tally_type, s_rule_final);
    o_span_id = offset_of(tally_type, s_span_id);
    o_held = offset_of(tally_type, s_held);
    o_pending = offset_of(tally_type, s_pending);
    o_counts = offset_of(tally_type, s_counts);
    o_limits = offset_of(tally_type, s_limits);
    o_systems = offset_of(tally_type, s_systems);
    o_statements = offset_of(tally_type, s_statements);
    o_lim_systems = offset_of(tally_type, s_lim_systems);
    o_last_db = offset_of(tally_type, s_last_db);
    o_last_db_start = offset_of(tally_type, s_last_db_start);
    o_last_http = offset_of(tally_type, s_last_http);
    o_last_http_start = offset_of(tally_type, s_last_http_start);
    o_max_statement = offset_of(tally_type, s_max_statement);
    if (PyErr_Occurred())
        goto failed;
    configured = 1;
    Py_RETURN_NONE;
failed:
    Py_XDECREF(size);
    configured = 0;
    return NULL;
}

/* -- aggregate(states, values, slots, recorded): `_metrics.aggregate_values` compiled --------------------- */

/* `a < b`: 1, 0, or -1 on error. */
static int
less_than(PyObject *a, PyObject *b)
{
    double x, y;
    if (exact_double(a, &x) && exact_double(b, &y))
        return x < y;
    return PyObject_RichCompareBool(a, b, Py_LT);
}

/* bisect.bisect_left(bounds, value) on a tuple; -1 on error. */
static Py_ssize_t
bisect_left_of(PyObject *bounds, PyObject *value)
{
    Py_ssize_t lo = 0, hi = PyTuple_GET_SIZE(bounds);
    double v, b;
    int fast = exact_double(value, &v);
    while (lo < hi) {
        Py_ssize_t mid = (Py_ssize_t)(((size_t)lo + (size_t)hi) / 2);
        PyObject *item = PyTuple_GET_ITEM(bounds, mid);
        int less = fast && exact_double(item, &b) ? b < v : PyObject_RichCompareBool(item, value, Py_LT);
        if (less < 0)
            return -1;
        if (less)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* A new aggregate state: [[0] * (buckets + 1), 0, inf, -inf, time.time_ns()]. */
static PyObject *
new_state(Py_ssize_t buckets)
{
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *counts = PyList_New(buckets + 1);
    if (counts == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i <= buckets; i++)
        PyList_SET_ITEM(counts, i, PyLong_FromLong(0));
    return Py_BuildValue("[NiddL]", counts, 0, Py_HUGE_VAL, -Py_HUGE_VAL,
                         (long long)now.tv_sec * 1000000000LL + (long long)now.tv_nsec);
}

/* `state[index] = value` when `value` is set (a new reference, stolen); 0, or -1 on error. */
static int
put(PyObject *list, Py_ssize_t index, PyObject *value)
{
    if (value == NULL)
        return -1;
    PyList_SetItem(list, index, value); /* steals; the index is checked by the caller */
    return 0;
}

/* One value into its state: the bucket's count, the sum, min and max (as `aggregate_values` does). */
static int
aggregate_one(PyObject *state, PyObject *bounds, PyObject *value)
{
    if (!PyList_CheckExact(state) || PyList_GET_SIZE(state) < 4 || !PyList_CheckExact(PyList_GET_ITEM(state, 0))) {
        PyErr_SetString(PyExc_TypeError, "aggregate: a state is not [counts, sum, min, max, start]");
        return -1;
    }
    PyObject *counts = PyList_GET_ITEM(state, 0);
    Py_ssize_t index = bisect_left_of(bounds, value);
    if (index < 0)
        return -1;
    if (index >= PyList_GET_SIZE(counts)) {
        PyErr_SetString(PyExc_IndexError, "aggregate: fewer bucket counts than bounds");
        return -1;
    }
    PyObject *count = PyList_GET_ITEM(counts, index);
    int overflow = 0;
    long long n = PyLong_CheckExact(count) ? PyLong_AsLongLongAndOverflow(count, &overflow) : -1;
    PyObject *one = NULL;
    PyObject *next_count = n >= 0 && !overflow && n < LLONG_MAX ? PyLong_FromLongLong(n + 1)
                                                                 : (one = PyLong_FromLong(1)) != NULL ? PyNumber_Add(count, one) : NULL;
    Py_XDECREF(one);
    if (put(counts, index, next_count) < 0)
        return -1;
    PyObject *total = PyList_GET_ITEM(state, 1);
    PyObject *sum = PyFloat_CheckExact(total) && PyFloat_CheckExact(value)
                        ? PyFloat_FromDouble(PyFloat_AS_DOUBLE(total) + PyFloat_AS_DOUBLE(value))
                        : PyNumber_Add(total, value);
    if (put(state, 1, sum) < 0)
        return -1;
    int lower = less_than(value, PyList_GET_ITEM(state, 2));
    if (lower < 0 || (lower && put(state, 2, Py_NewRef(value)) < 0))
        return -1;
    int higher = less_than(PyList_GET_ITEM(state, 3), value);
    if (higher < 0 || (higher && put(state, 3, Py_NewRef(value)) < 0))
        return -1;
    return 0;
}

static PyObject *
speedups_aggregate(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_Check(args[0]) || !PyDict_Check(args[1]) || !PyDict_Check(args[2]) ||
        !PyList_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "aggregate(states: dict, values: dict, slots: dict, recorded: list)");
        return NULL;
    }
    PyObject *states = args[0], *values = args[1], *slots = args[2], *recorded = args[3];
    PyObject *metric, *value, *zero = NULL;
    Py_ssize_t pos = 0;
    int failed = 0;
    while (!failed && PyDict_Next(values, &pos, &metric, &value)) {
        Py_INCREF(metric);
        Py_INCREF(value);
        PyObject *bounds = PyDict_GetItemWithError(slots, metric);
        Py_XINCREF(bounds);
        if (bounds == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, metric);
            failed = 1;
        } else if (!PyTuple_CheckExact(bounds)) { /* no histogram (None), or one recorded through the SDK */
            if (bounds != Py_None) {
                PyObject *pair = PyTuple_Pack(2, metric, value);
                failed = pair == NULL || PyList_Append(recorded, pair) < 0;
                Py_XDECREF(pair);
            }
        } else {
            /* As `Histogram.record` would: negative values as 0, infinity dropped. */
            int negative;
            double d;
            if (exact_double(value, &d))
                negative = !(d >= 0);
            else {
                if (zero == NULL && (zero = PyLong_FromLong(0)) == NULL) {
                    failed = 1;
                    goto next;
                }
                int at_least = PyObject_RichCompareBool(value, zero, Py_GE);
                negative = at_least < 0 ? -1 : !at_least;
            }
            if (negative < 0) {
                failed = 1;
                goto next;
            }
            if (negative) {
                Py_SETREF(value, PyLong_FromLong(0));
                if (value == NULL) {
                    failed = 1;
                    goto next;
                }
            }
            int infinite; /* `value == inf`: dropped */
            if (PyFloat_CheckExact(value))
                infinite = PyFloat_AS_DOUBLE(value) == Py_HUGE_VAL;
            else if (PyLong_CheckExact(value))
                infinite = 0;
            else {
                PyObject *inf = PyFloat_FromDouble(Py_HUGE_VAL);
                infinite = inf != NULL ? PyObject_RichCompareBool(value, inf, Py_EQ) : -1;
                Py_XDECREF(inf);
            }
            if (infinite != 0) {
                failed = infinite < 0;
                goto next;
            }
            PyObject *state = PyDict_GetItemWithError(states, metric);
            if (state != NULL)
                Py_INCREF(state);
            else if (!PyErr_Occurred() && (state = new_state(PyTuple_GET_SIZE(bounds))) != NULL &&
                     PyDict_SetItem(states, metric, state) < 0)
                Py_CLEAR(state);
            failed = state == NULL || aggregate_one(state, bounds, value) < 0;
            Py_XDECREF(state);
        }
    next:
        Py_XDECREF(bounds);
        Py_XDECREF(metric);
        Py_XDECREF(value);
    }
    Py_XDECREF(zero);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

/* -- put_counts and prefixed: two loops of a scope's end (`tally.put_counts`, `spanformat.prefixed`) ------- */

/* `tally._ms(ns)`, `round(ns / 1000) / 1000`, for an int within 2**53 (exact as a double, so both divisions
 * and the round half to even give Python's float); anything else through `ms` itself. New reference. */
static PyObject *
ms_of(PyObject *ns, PyObject *ms)
{
    if (PyLong_CheckExact(ns)) {
        int overflow = 0;
        long long value = PyLong_AsLongLongAndOverflow(ns, &overflow);
        if (!overflow && value <= (1LL << 53) && value >= -(1LL << 53))
            return PyFloat_FromDouble(rint((double)value / 1000.0) / 1000.0);
        if (value == -1 && PyErr_Occurred())
            return NULL;
    }
    return PyObject_CallOneArg(ms, ns);
}

static PyObject *
speedups_put_counts(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyDict_Check(args[0]) || !PyTuple_Check(args[1]) || !PyTuple_Check(args[2]) ||
        !PyList_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "put_counts(values: dict, metrics: tuple, timed: tuple, counts: list, ms)");
        return NULL;
    }
    PyObject *values = args[0], *metrics = args[1], *timed = args[2], *counts = args[3], *ms = args[4];
    Py_ssize_t n = PyTuple_GET_SIZE(metrics);
    if (PyTuple_GET_SIZE(timed) < n)
        n = PyTuple_GET_SIZE(timed);
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(counts); i++) { /* zip(): the shortest */
        PyObject *count = Py_NewRef(PyList_GET_ITEM(counts, i));
        int is_timed = PyObject_IsTrue(PyTuple_GET_ITEM(timed, i));
        PyObject *value = is_timed < 0 ? NULL : is_timed ? ms_of(count, ms) : Py_NewRef(count);
        Py_DECREF(count);
        if (value == NULL)
            return NULL;
        int failed = PyDict_SetItem(values, PyTuple_GET_ITEM(metrics, i), value);
        Py_DECREF(value);
        if (failed < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
speedups_prefixed(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "prefixed(values: dict, keys: dict, make_key)");
        return NULL;
    }
    PyObject *values = args[0], *keys = args[1], *make_key = args[2];
#if PY_VERSION_HEX < 0x030D0000
    PyObject *summary = _PyDict_NewPresized(PyDict_GET_SIZE(values) + 4); /* no resize while it fills */
#else
    PyObject *summary = PyDict_New();
#endif
    if (summary == NULL)
        return NULL;
    PyObject *metric, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(values, &pos, &metric, &value)) {
        Py_INCREF(metric);
        Py_INCREF(value);
        PyObject *key = PyDict_GetItemWithError(keys, metric); /* `keys.get(metric) or make_key(metric)` */
        int truth = key != NULL ? PyObject_IsTrue(key) : PyErr_Occurred() ? -1 : 0;
        key = truth < 0 ? NULL : truth ? Py_NewRef(key) : PyObject_CallOneArg(make_key, metric);
        int failed = key == NULL || PyDict_SetItem(summary, key, value) < 0;
        Py_XDECREF(key);
        Py_DECREF(metric);
        Py_DECREF(value);
        if (failed) {
            Py_DECREF(summary);
            return NULL;
        }
    }
    return summary;
}

static PyMethodDef speedups_methods[] = {
    {"configure", (PyCFunction)speedups_configure, METH_O, "Hand over the constants and Python fallbacks (once)."},
    {"configure_probes", (PyCFunction)speedups_configure_probes, METH_O, "configure_probes(rss_slowly)."},
    {"rss_bytes", (PyCFunction)speedups_rss_bytes, METH_NOARGS, "The resident set size in bytes (_probes.rss_bytes)."},
    {"rss_open", (PyCFunction)speedups_rss_open, METH_VARARGS, "rss_open(fd): read /proc/self/statm from fd (-1: none)."},
#ifdef RUSAGE_THREAD
    {"cpu_and_peak", (PyCFunction)speedups_cpu_and_peak, METH_NOARGS, "(thread CPU ns, peak RSS bytes): one getrusage."},
#endif
    {"count", (PyCFunction)(void (*)(void))speedups_count, METH_FASTCALL,
     "count(tally, batch): tally.count_python compiled; called under the tally's lock."},
    {"aggregate", (PyCFunction)(void (*)(void))speedups_aggregate, METH_FASTCALL,
     "aggregate(states, values, slots, recorded): _metrics.aggregate_values compiled; called under its lock."},
    {"put_counts", (PyCFunction)(void (*)(void))speedups_put_counts, METH_FASTCALL,
     "put_counts(values, metrics, timed, counts, ms): tally.put_counts compiled."},
    {"prefixed", (PyCFunction)(void (*)(void))speedups_prefixed, METH_FASTCALL,
     "prefixed(values, keys, make_key): spanformat.prefixed compiled."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "otel_budget._speedups", "The compiled span hot path (see _speedups.c).", -1,
    speedups_methods,
};

#define INTERN(var, text)                                                                                              \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                                              \
        return NULL;

PyMODINIT_FUNC
PyInit__speedups(void)
{
    INTERN(s_parent, "_parent");
    INTERN(s_attributes, "_attributes");
    INTERN(s_dict, "_dict");
    INTERN(s_context, "_context");
    INTERN(s_kind, "_kind");
    INTERN(s_start_time, "_start_time");
    INTERN(s_end_time, "_end_time");
    INTERN(s_name, "_name");
    INTERN(s_spans, "_spans");
    INTERN(s_closed, "closed");
    INTERN(s_open_spans, "open_spans");
    INTERN(s_rule_final, "rule_final");
    INTERN(s_adopt, "adopt");
    INTERN(s_unrouted_child, "_unrouted_child");
    INTERN(s_span_id, "span_id");
    INTERN(s_held, "held");
    INTERN(s_pending, "pending");
    INTERN(s_resolve, "_resolve");
    INTERN(s_drain, "drain");
    INTERN(s_counts, "counts");
    INTERN(s_limits, "limits");
    INTERN(s_systems, "systems");
    INTERN(s_statements, "statements");
    INTERN(s_lim_systems, "lim_systems");
    INTERN(s_last_db, "last_db");
    INTERN(s_last_db_start, "last_db_start");
    INTERN(s_last_http, "last_http");
    INTERN(s_last_http_start, "last_http_start");
    INTERN(s_max_statement, "max_statement");
    INTERN(s_cross, "_cross");
    INTERN(s_cross_system, "_cross_system");
    INTERN(s_add, "_add");
    INTERN(s_on_ending_frozen, "_ON_ENDING_FROZEN");
    INTERN(s_public_attributes, "attributes");
    INTERN(k_other, "other");
    INTERN(k_mongodb, "mongodb");
    if ((one = PyLong_FromLong(1)) == NULL)
        return NULL;
    if (PyType_Ready(&FastPathType) < 0)
        return NULL;
    if (PyType_Ready(&PipelineType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&FastPathType);
    if (PyModule_AddObject(module, "FastPath", (PyObject *)&FastPathType) < 0) {
        Py_DECREF(&FastPathType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&PipelineType);
    if (PyModule_AddObject(module, "Pipeline", (PyObject *)&PipelineType) < 0) {
        Py_DECREF(&PipelineType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
