// adamlab's host accelerator: the per-step bookkeeping of optimizer.step() in C++.
//
// A cached optimizer step re-reads every tensor it is about to update -- each gradient,
// each state tensor, each address -- because a tensor may have been replaced, moved
// (`t.data = ...`) or freed since the last step. In Python that is about twenty C-level
// calls per tensor: 5-8 ms per step for 4000 tensors on a 2-core Xeon, longer than the
// fused CUDA kernel that follows (benchmarks/RESULTS.md). These functions do the same reads in one call per list. Each has a Python twin
// that says the same thing (see adamlab/optim/_host.py, which builds and loads this file,
// and the tests that compare the two on the same inputs).
//
// Only plain tensors and Parameters are read here; anything else (a tensor subclass such
// as DTensor, a non-tensor) makes a function return None and the caller take the Python
// path, which knows how to handle it or how to name the problem.

#include <Python.h>

#include <cstdint>
#include <vector>

#include <torch/csrc/autograd/python_variable.h>

namespace {

PyObject* kExpAvg;
PyObject* kExpAvgSq;
PyObject* kMaxExpAvgSq;
PyObject* kStep;

// An owned reference: released when it goes out of scope.
class Ref {
 public:
  Ref() = default;
  explicit Ref(PyObject* owned) : obj_(owned) {}
  static Ref borrowed(PyObject* obj) {
    Py_XINCREF(obj);
    return Ref(obj);
  }
  Ref(Ref&& other) noexcept : obj_(other.release()) {}
  Ref& operator=(Ref&& other) noexcept {
    Py_XDECREF(obj_);
    obj_ = other.release();
    return *this;
  }
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
  ~Ref() { Py_XDECREF(obj_); }
  PyObject* get() const { return obj_; }
  PyObject* release() {
    PyObject* obj = obj_;
    obj_ = nullptr;
    return obj;
  }
  explicit operator bool() const { return obj_ != nullptr; }

 private:
  PyObject* obj_ = nullptr;
};

// A list argument, or nullptr with TypeError set.
bool is_list(PyObject* obj, const char* what) {
  if (!PyList_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "%s must be a list, got %s", what, Py_TYPE(obj)->tp_name);
    return false;
  }
  return true;
}

// An int64 array passed as bytes, or nullptr with TypeError set.
const int64_t* int64s(PyObject* obj, Py_ssize_t* n, const char* what) {
  if (!PyBytes_Check(obj) || PyBytes_GET_SIZE(obj) % 8 != 0) {
    PyErr_Format(PyExc_TypeError, "%s must be bytes of int64 values", what);
    return nullptr;
  }
  *n = PyBytes_GET_SIZE(obj) / 8;
  return reinterpret_cast<const int64_t*>(PyBytes_AS_STRING(obj));
}

PyObject* pack(const std::vector<int64_t>& values) {
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(values.data()),
                                   static_cast<Py_ssize_t>(values.size() * sizeof(int64_t)));
}

// state_values(state, keys) -> list | None
// The values of dict `state` in order, if its keys are, in order, the objects whose ids
// are `keys` (int64 bytes); else None. Python twin: _AdamFamily._state_unchanged.
PyObject* state_values(PyObject*, PyObject* args) {
  PyObject *state, *keys_obj;
  if (!PyArg_ParseTuple(args, "O!O", &PyDict_Type, &state, &keys_obj)) return nullptr;
  Py_ssize_t n;
  const int64_t* keys = int64s(keys_obj, &n, "keys");
  if (!keys) return nullptr;
  if (PyDict_GET_SIZE(state) != n) Py_RETURN_NONE;
  PyObject* out = PyList_New(n);
  if (!out) return nullptr;
  Py_ssize_t pos = 0, i = 0;
  PyObject *key, *value;
  while (PyDict_Next(state, &pos, &key, &value)) {
    if (i >= n || reinterpret_cast<int64_t>(key) != keys[i]) {
      Py_DECREF(out);
      Py_RETURN_NONE;
    }
    Py_INCREF(value);
    PyList_SET_ITEM(out, i++, value);
  }
  if (i != n) {
    Py_DECREF(out);
    Py_RETURN_NONE;
  }
  return out;
}

// gather(params, param_ids, no_grad, states_in_order, positions, amsgrad) -> tuple | None
// A group's parallel lists (params with a gradient, gradients, exp_avgs, exp_avg_sqs,
// max_exp_avg_sqs, steps), read now. None when the parameters are not the objects whose
// ids are `param_ids` (int64 bytes), the pattern of missing gradients differs from
// `no_grad` (bytes, one 0/1 per parameter), a state dict (found at `positions`, int64
// bytes, in `states_in_order`) lacks a key, a parameter or gradient is not a plain dense
// tensor: the caller then gathers in full. Python twin: _Gathered.gather.
PyObject* gather(PyObject*, PyObject* args) {
  PyObject *params, *ids_obj, *no_grad_obj, *states, *positions_obj;
  int amsgrad;
  if (!PyArg_ParseTuple(args, "OOOOOp", &params, &ids_obj, &no_grad_obj, &states, &positions_obj, &amsgrad))
    return nullptr;
  if (!is_list(params, "params") || !is_list(states, "states_in_order")) return nullptr;
  Py_ssize_t n_ids, n_positions;
  const int64_t* ids = int64s(ids_obj, &n_ids, "param_ids");
  if (!ids) return nullptr;
  const int64_t* positions = int64s(positions_obj, &n_positions, "positions");
  if (!positions) return nullptr;
  if (!PyBytes_Check(no_grad_obj)) {
    PyErr_SetString(PyExc_TypeError, "no_grad must be bytes");
    return nullptr;
  }
  const Py_ssize_t n = PyList_GET_SIZE(params);
  if (n_ids != n || PyBytes_GET_SIZE(no_grad_obj) != n) Py_RETURN_NONE;
  const char* no_grad = PyBytes_AS_STRING(no_grad_obj);

  // Every object is held by a strong reference (Ref) from the moment it is read: wrapping a
  // gradient allocates, which can run the garbage collector and so arbitrary __del__ code,
  // and a dict lookup can run a key's __eq__; either could drop what a borrowed reference
  // points to. Refs also release everything on every way out, C++ exceptions included.
  Ref lists[6];
  for (Ref& l : lists)
    if (!(l = Ref(PyList_New(0)))) return nullptr;
  PyObject* keys[4] = {kExpAvg, kExpAvgSq, kMaxExpAvgSq, kStep};
  Py_ssize_t j = 0;  // index among parameters with a gradient
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (i >= PyList_GET_SIZE(params)) Py_RETURN_NONE;  // the list changed under us
    Ref p = Ref::borrowed(PyList_GET_ITEM(params, i));
    if (reinterpret_cast<int64_t>(p.get()) != ids[i] || !THPVariable_CheckExact(p.get())) Py_RETURN_NONE;
    const at::Tensor grad = THPVariable_Unpack(p.get()).grad();  // a copy: owns the gradient
    if (grad.defined() == static_cast<bool>(no_grad[i])) Py_RETURN_NONE;
    if (!grad.defined()) continue;
    if (grad.layout() != c10::kStrided) Py_RETURN_NONE;  // sparse: the full gather names it
    if (j >= n_positions || positions[j] < 0 || positions[j] >= PyList_GET_SIZE(states)) Py_RETURN_NONE;
    Ref state = Ref::borrowed(PyList_GET_ITEM(states, positions[j]));
    ++j;
    if (!PyDict_CheckExact(state.get())) Py_RETURN_NONE;
    Ref g(THPVariable_Wrap(grad));
    if (!g) return nullptr;
    Ref found[4];
    for (int k = 0; k < 4; ++k) {
      if (k == 2 && !amsgrad) continue;
      found[k] = Ref::borrowed(PyDict_GetItemWithError(state.get(), keys[k]));
      if (!found[k]) {
        if (PyErr_Occurred()) return nullptr;
        Py_RETURN_NONE;  // a state dict cleared or cut down: the full gather deals with it
      }
    }
    if (PyList_Append(lists[0].get(), p.get()) || PyList_Append(lists[1].get(), g.get()) ||
        PyList_Append(lists[2].get(), found[0].get()) || PyList_Append(lists[3].get(), found[1].get()) ||
        (amsgrad && PyList_Append(lists[4].get(), found[2].get())) || PyList_Append(lists[5].get(), found[3].get()))
      return nullptr;
  }
  if (j != n_positions) Py_RETURN_NONE;
  PyObject* out = PyTuple_New(6);
  if (!out) return nullptr;
  for (int k = 0; k < 6; ++k) PyTuple_SET_ITEM(out, k, lists[k].release());  // steals
  return out;
}

// The tensor at `obj`, or nullptr if it is not a plain tensor or Parameter.
const at::Tensor* tensor(PyObject* obj) {
  return THPVariable_CheckExact(obj) ? &THPVariable_Unpack(obj) : nullptr;
}

// signature(params, exp_avgs, exp_avg_sqs, maxes, steps) -> bytes | None
// What the fused CUDA tables encode, as int64 values (see triton_fused._signature, its
// Python twin, for the same list in the same order): the address of every parameter,
// state tensor and step count; each parameter's size, dtype and contiguity (strides too
// if any is not contiguous); each state tensor's size in bytes. `maxes` is () without
// amsgrad. None if an entry is not a plain tensor.
PyObject* signature(PyObject*, PyObject* args) {
  PyObject *params, *exp_avgs, *exp_avg_sqs, *maxes, *steps;
  if (!PyArg_ParseTuple(args, "OOOOO", &params, &exp_avgs, &exp_avg_sqs, &maxes, &steps)) return nullptr;
  PyObject* seqs[5] = {params, exp_avgs, exp_avg_sqs, maxes, steps};
  for (PyObject* s : seqs)
    if (!PyList_Check(s) && !PyTuple_Check(s)) {
      PyErr_SetString(PyExc_TypeError, "signature takes lists or tuples of tensors");
      return nullptr;
    }
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(params);
  std::vector<const at::Tensor*> ts[5];
  for (int k = 0; k < 5; ++k) {
    const Py_ssize_t m = PySequence_Fast_GET_SIZE(seqs[k]);
    PyObject** items = PySequence_Fast_ITEMS(seqs[k]);
    ts[k].reserve(m);
    for (Py_ssize_t i = 0; i < m; ++i) {
      const at::Tensor* t = tensor(items[i]);
      if (!t) Py_RETURN_NONE;
      ts[k].push_back(t);
    }
  }
  std::vector<int64_t> out;
  out.reserve(12 * n);
  for (int k = 0; k < 5; ++k)
    for (const at::Tensor* t : ts[k]) out.push_back(reinterpret_cast<int64_t>(t->data_ptr()));
  for (const at::Tensor* t : ts[0]) out.push_back(t->numel());
  for (const at::Tensor* t : ts[0]) out.push_back(static_cast<int64_t>(t->scalar_type()));
  for (int k = 1; k < 4; ++k)
    for (const at::Tensor* t : ts[k]) out.push_back(static_cast<int64_t>(t->nbytes()));
  bool all_contiguous = true;
  for (const at::Tensor* t : ts[0]) {
    const bool c = t->is_contiguous();
    all_contiguous = all_contiguous && c;
    out.push_back(c);
  }
  if (!all_contiguous)
    for (const at::Tensor* t : ts[0]) {
      out.push_back(t->dim());
      for (int64_t stride : t->strides()) out.push_back(stride);
    }
  return pack(out);
}

// grads(grads) -> (layout: bytes, addresses: bytes) | None
// Per gradient: dtype, device index, contiguity, shape and (if not contiguous) strides;
// and its address. None if one is not a plain dense tensor. The Python twin is the
// gradient half of triton_fused._still_valid (which checks dtype, size, device and
// contiguity against the parameters'; the plan keeps this layout from when it checked).
PyObject* grads(PyObject*, PyObject* list) {
  if (!is_list(list, "grads")) return nullptr;
  const Py_ssize_t n = PyList_GET_SIZE(list);
  std::vector<int64_t> layout, addresses;
  layout.reserve(6 * n);
  addresses.reserve(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    const at::Tensor* g = tensor(PyList_GET_ITEM(list, i));
    if (!g || g->layout() != c10::kStrided) Py_RETURN_NONE;
    const bool c = g->is_contiguous();
    layout.push_back(static_cast<int64_t>(g->scalar_type()));
    layout.push_back(g->get_device());
    layout.push_back(c);
    layout.push_back(g->dim());
    for (int64_t size : g->sizes()) layout.push_back(size);
    if (!c)
      for (int64_t stride : g->strides()) layout.push_back(stride);
    addresses.push_back(reinterpret_cast<int64_t>(g->data_ptr()));
  }
  PyObject* a = pack(layout);
  PyObject* b = a ? pack(addresses) : nullptr;
  if (!b) {
    Py_XDECREF(a);
    return nullptr;
  }
  return Py_BuildValue("(NN)", a, b);
}

PyObject* wrap(PyObject* (*f)(PyObject*, PyObject*), PyObject* self, PyObject* args) {
  try {
    return f(self, args);
  } catch (const std::exception& e) {  // a c10::Error from a tensor call: a Python error
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "adamlab host accelerator: unknown C++ exception");
    return nullptr;
  }
}

PyObject* state_values_py(PyObject* self, PyObject* args) { return wrap(state_values, self, args); }
PyObject* gather_py(PyObject* self, PyObject* args) { return wrap(gather, self, args); }
PyObject* signature_py(PyObject* self, PyObject* args) { return wrap(signature, self, args); }
PyObject* grads_py(PyObject* self, PyObject* args) { return wrap(grads, self, args); }

PyMethodDef methods[] = {
    {"state_values", state_values_py, METH_VARARGS, "dict values if its keys are the given ids, in order"},
    {"gather", gather_py, METH_VARARGS, "a group's parallel lists, read now"},
    {"signature", signature_py, METH_VARARGS, "what the fused CUDA tables encode, as int64 bytes"},
    {"grads", grads_py, METH_O, "gradients' layout and addresses, as int64 bytes"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_host_ext", "adamlab's host accelerator (see host.cpp)", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__host_ext() {
  kExpAvg = PyUnicode_InternFromString("exp_avg");
  kExpAvgSq = PyUnicode_InternFromString("exp_avg_sq");
  kMaxExpAvgSq = PyUnicode_InternFromString("max_exp_avg_sq");
  kStep = PyUnicode_InternFromString("step");
  if (!kExpAvg || !kExpAvgSq || !kMaxExpAvgSq || !kStep) return nullptr;
  return PyModule_Create(&module);
}
