// kfwguard.matching._native: a text filter's block scan in C++, on RE2.
//
// The Python block path (engine.TextFilter.scan_lines) first checks that the
// block is valid UTF-8, has no CR and no over-long line, and that every line
// has the plain syslog header (or that the filter has no header at all).
// For such a block, Matcher.scan does per line what the per-record path
// does: split off the header, check the program, run every rule anchored at
// the message start (one RE2::Set pass), take the first rule in file order
// that matches, and run that rule alone for the host's span. Python then
// only sees the lines that matched: (line end, rule index, host start, host
// end), offsets into the block.
//
// Everything here reads a buffer it does not own and never writes outside
// its own vectors; a line whose header is not of the checked shape raises
// ValueError, and the caller takes the per-record path for that block.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <re2/re2.h>
#include <re2/set.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

struct Rule {
    std::unique_ptr<re2::RE2> regex;
    int host_group;  // capture group index of the host (1-based, as RE2 counts)
};

struct MatcherObject {
    PyObject_HEAD
    std::vector<Rule>* rules;
    re2::RE2::Set* set;
    std::vector<std::string>* programs;
    bool header;
};

void Matcher_dealloc(MatcherObject* self) {
    delete self->rules;
    delete self->set;
    delete self->programs;
    Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyObject* Matcher_new(PyTypeObject* type, PyObject*, PyObject*) {
    auto* self = reinterpret_cast<MatcherObject*>(type->tp_alloc(type, 0));
    if (self != nullptr) {
        self->rules = nullptr;
        self->set = nullptr;
        self->programs = nullptr;
        self->header = false;
    }
    return reinterpret_cast<PyObject*>(self);
}

bool as_string(PyObject* item, std::string* out) {
    char* data;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(item, &data, &size) != 0) return false;
    out->assign(data, static_cast<size_t>(size));
    return true;
}

// Matcher(patterns: list[bytes], host_groups: list[int], programs: list[bytes], header: bool)
int Matcher_init(MatcherObject* self, PyObject* args, PyObject*) {
    PyObject* patterns;
    PyObject* groups;
    PyObject* programs;
    int header;
    if (!PyArg_ParseTuple(args, "O!O!O!p", &PyList_Type, &patterns, &PyList_Type, &groups,
                          &PyList_Type, &programs, &header)) {
        return -1;
    }
    if (self->rules != nullptr) {  // scan() reads them without the GIL: never swap them
        PyErr_SetString(PyExc_RuntimeError, "Matcher already initialised");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(patterns);
    if (n == 0 || PyList_GET_SIZE(groups) != n) {
        PyErr_SetString(PyExc_ValueError, "one host group per pattern, at least one pattern");
        return -1;
    }
    auto rules = std::make_unique<std::vector<Rule>>();
    re2::RE2::Options options;
    options.set_log_errors(false);
    auto set = std::make_unique<re2::RE2::Set>(options, re2::RE2::ANCHOR_START);
    for (Py_ssize_t i = 0; i < n; ++i) {
        std::string pattern;
        if (!as_string(PyList_GET_ITEM(patterns, i), &pattern)) return -1;
        long group = PyLong_AsLong(PyList_GET_ITEM(groups, i));
        if (group == -1 && PyErr_Occurred()) return -1;
        auto regex = std::make_unique<re2::RE2>(pattern, options);
        if (!regex->ok() || group < 1 || group > regex->NumberOfCapturingGroups() ||
            group >= 64) {
            PyErr_Format(PyExc_ValueError, "rule %zd: %s", i,
                         regex->ok() ? "no such host group" : regex->error().c_str());
            return -1;
        }
        std::string error;
        if (set->Add(pattern, &error) != static_cast<int>(i)) {
            PyErr_Format(PyExc_ValueError, "rule %zd: %s", i, error.c_str());
            return -1;
        }
        rules->push_back(Rule{std::move(regex), static_cast<int>(group)});
    }
    if (!set->Compile()) {
        PyErr_SetString(PyExc_ValueError, "the rules cannot be combined (RE2 memory budget)");
        return -1;
    }
    auto names = std::make_unique<std::vector<std::string>>();
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(programs); ++i) {
        std::string program;
        if (!as_string(PyList_GET_ITEM(programs, i), &program)) return -1;
        names->push_back(std::move(program));
    }
    self->rules = rules.release();
    self->set = set.release();
    self->programs = names.release();
    self->header = header != 0;
    return 0;
}

// The program check of the block path: the tag is a listed program, alone or
// followed by "[" (the pid and whatever else sshd's tag carries).
bool program_allowed(const std::vector<std::string>& programs, const char* tag, size_t len) {
    if (programs.empty()) return true;
    for (const auto& p : programs) {
        if (len < p.size() || std::memcmp(tag, p.data(), p.size()) != 0) continue;
        if (len == p.size() || tag[p.size()] == '[') return true;
    }
    return false;
}

const char* find_pair(const char* from, const char* end, char a, char b) {
    for (const char* p = from; p + 1 < end; ++p) {
        p = static_cast<const char*>(std::memchr(p, a, static_cast<size_t>(end - p)));
        if (p == nullptr || p + 1 >= end) return nullptr;
        if (p[1] == b) return p;
    }
    return nullptr;
}

PyObject* Matcher_scan(MatcherObject* self, PyObject* arg) {
    if (self->rules == nullptr) {
        PyErr_SetString(PyExc_RuntimeError, "Matcher not initialised");
        return nullptr;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) != 0) return nullptr;
    const char* base = static_cast<const char*>(view.buf);
    const char* end = base + view.len;
    struct Hit {
        Py_ssize_t line_end, rule, host_start, host_end;
    };
    std::vector<Hit> hits;
    bool bad_header = false;
    Py_BEGIN_ALLOW_THREADS
    std::vector<int> matched;
    re2::StringPiece groups[64];
    const char* line = base;
    while (line < end) {
        const char* nl = static_cast<const char*>(
            std::memchr(line, '\n', static_cast<size_t>(end - line)));
        if (nl == nullptr) nl = end;
        const char* message = line;
        if (nl > line && self->header) {
            // stamp (15) and a space, the host up to a space, the tag up to ": "
            const char* host = line + 16;
            const char* space = host < nl ? static_cast<const char*>(
                std::memchr(host, ' ', static_cast<size_t>(nl - host))) : nullptr;
            const char* colon = space != nullptr ? find_pair(space + 1, nl, ':', ' ')
                                                 : nullptr;
            if (colon == nullptr) {
                bad_header = true;
                break;
            }
            if (!program_allowed(*self->programs, space + 1,
                                 static_cast<size_t>(colon - space - 1))) {
                line = nl + 1;
                continue;
            }
            message = colon + 2;
        }
        if (nl > line) {
            re2::StringPiece text(message, static_cast<size_t>(nl - message));
            matched.clear();
            if (self->set->Match(text, &matched) && !matched.empty()) {
                int first = matched[0];
                for (int k : matched) first = k < first ? k : first;
                const Rule& rule = (*self->rules)[static_cast<size_t>(first)];
                int want = rule.host_group + 1;
                if (rule.regex->Match(text, 0, text.size(), re2::RE2::ANCHOR_START, groups,
                                      want)) {
                    const re2::StringPiece& h = groups[rule.host_group];
                    // A host group that took no part: an empty host (bad-host), as
                    // the per-record path makes of it.
                    Py_ssize_t from = h.data() == nullptr ? -1 : h.data() - base;
                    Py_ssize_t to = h.data() == nullptr ? -1 : from + h.size();
                    hits.push_back(Hit{nl - base, first, from, to});
                }
            }
        }
        line = nl + 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (bad_header) {
        PyErr_SetString(PyExc_ValueError, "a line without the checked syslog header");
        return nullptr;
    }
    PyObject* out = PyList_New(static_cast<Py_ssize_t>(hits.size()));
    if (out == nullptr) return nullptr;
    for (size_t i = 0; i < hits.size(); ++i) {
        PyObject* item = Py_BuildValue("(nnnn)", hits[i].line_end, hits[i].rule,
                                       hits[i].host_start, hits[i].host_end);
        if (item == nullptr) {
            Py_DECREF(out);
            return nullptr;
        }
        PyList_SET_ITEM(out, static_cast<Py_ssize_t>(i), item);
    }
    return out;
}

PyMethodDef Matcher_methods[] = {
    {"scan", reinterpret_cast<PyCFunction>(Matcher_scan), METH_O,
     "scan(block) -> [(line end, rule index, host start, host end)] for matching lines"},
    {nullptr, nullptr, 0, nullptr},
};

PyTypeObject MatcherType = {
    PyVarObject_HEAD_INIT(nullptr, 0)
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "kfwguard.matching._native",
    "A text filter's block scan in C++ on RE2 (see engine.TextFilter.scan_lines).", -1,
    nullptr, nullptr, nullptr, nullptr, nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__native(void) {
    MatcherType.tp_name = "kfwguard.matching._native.Matcher";
    MatcherType.tp_basicsize = sizeof(MatcherObject);
    MatcherType.tp_dealloc = reinterpret_cast<destructor>(Matcher_dealloc);
    MatcherType.tp_flags = Py_TPFLAGS_DEFAULT;
    MatcherType.tp_doc = "Matcher(patterns, host_groups, programs, header)";
    MatcherType.tp_methods = Matcher_methods;
    MatcherType.tp_init = reinterpret_cast<initproc>(Matcher_init);
    MatcherType.tp_new = Matcher_new;
    if (PyType_Ready(&MatcherType) < 0) return nullptr;
    PyObject* module = PyModule_Create(&module_def);
    if (module == nullptr) return nullptr;
    Py_INCREF(&MatcherType);
    if (PyModule_AddObject(module, "Matcher", reinterpret_cast<PyObject*>(&MatcherType)) < 0) {
        Py_DECREF(&MatcherType);
        Py_DECREF(module);
        return nullptr;
    }
    return module;
}
