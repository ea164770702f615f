// kfwguard.matching._native: a text filter's block scan in C++, on RE2.
//
// The Python block path (engine.TextFilter.scan_lines) first checks that the
// block is valid UTF-8, has no CR and no over-long line. For such a block,
// Matcher.scan checks that every line has the plain syslog header (when the
// filter has one; plain_header), and does per line what the per-record path
// does: split off the header, check the program, run every rule anchored at
// the message start (one RE2::Set pass), take the first rule in file order
// that matches, and run that rule alone for the host's span. Python then
// only sees the lines that matched: (line end, rule index, host start, host
// end), offsets into the block.
//
// Matcher.track goes one step further for the daemon's hot path: it feeds
// the failures of a block straight into a jail's failure windows (Windows,
// below), so Python runs only for a host text not seen before, a new
// syslog stamp, and an address that reached maxretry (jails.Jail decides).
//
// Everything here reads a buffer it does not own and never writes outside
// its own containers; a line without the plain header raises
// ValueError before anything is counted, and the caller takes the
// per-record path for that block.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <re2/re2.h>
#include <re2/set.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

// ---- addresses as jails key them (addresses.host_key) ------------------------
//
// host_key is int(address) for IPv4 and int(address) | 1 << 128 for IPv6: 129
// bits, kept here as two 64-bit halves and the IPv6 flag.

struct Key {
    uint64_t hi, lo;
    bool v6;
    bool operator==(const Key& o) const { return lo == o.lo && hi == o.hi && v6 == o.v6; }
};

struct KeyHash {
    size_t operator()(const Key& k) const {  // splitmix64's finaliser over the three parts
        uint64_t x = k.lo ^ (k.hi * 0x9E3779B97F4A7C15ULL) ^ (k.v6 ? 0xD6E8FEB86659FD93ULL : 0);
        x ^= x >> 30;
        x *= 0xBF58476D1CE4E5B9ULL;
        x ^= x >> 27;
        x *= 0x94D049BB133111EBULL;
        return static_cast<size_t>(x ^ (x >> 31));
    }
};

bool key_from(PyObject* value, Key* out) {
    if (!PyLong_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "a host key is an int");
        return false;
    }
    unsigned long long small = PyLong_AsUnsignedLongLong(value);
    if (!(small == static_cast<unsigned long long>(-1) && PyErr_Occurred())) {
        *out = Key{0, small, false};
        return true;
    }
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return false;
    PyErr_Clear();  // wider than 64 bits (IPv6), or negative
    PyObject* shift = PyLong_FromLong(64);
    if (shift == nullptr) return false;
    PyObject* mid = PyNumber_Rshift(value, shift);
    PyObject* top = mid != nullptr ? PyNumber_Rshift(mid, shift) : nullptr;
    Py_DECREF(shift);
    bool ok = false;
    if (top != nullptr) {
        long flag = PyLong_AsLong(top);
        if (flag == 0 || flag == 1) {
            *out = Key{PyLong_AsUnsignedLongLongMask(mid), PyLong_AsUnsignedLongLongMask(value),
                       flag == 1};
            ok = !PyErr_Occurred();
        } else if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "not a host key");
        }
    }
    Py_XDECREF(mid);
    Py_XDECREF(top);
    return ok;
}

PyObject* key_to(const Key& key) {
    if (!key.v6 && key.hi == 0) return PyLong_FromUnsignedLongLong(key.lo);
    PyObject* hi = PyLong_FromUnsignedLongLong(key.hi);
    PyObject* lo = PyLong_FromUnsignedLongLong(key.lo);
    PyObject* shift = PyLong_FromLong(64);
    PyObject* flag = PyLong_FromLong(key.v6 ? 1 : 0);
    PyObject* out = nullptr;
    if (hi != nullptr && lo != nullptr && shift != nullptr && flag != nullptr) {
        PyObject* top = PyNumber_Lshift(flag, shift);  // flag << 64, then with hi << 64
        PyObject* upper = top != nullptr ? PyNumber_Or(top, hi) : nullptr;
        PyObject* moved = upper != nullptr ? PyNumber_Lshift(upper, shift) : nullptr;
        out = moved != nullptr ? PyNumber_Or(moved, lo) : nullptr;
        Py_XDECREF(top);
        Py_XDECREF(upper);
        Py_XDECREF(moved);
    }
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(shift);
    Py_XDECREF(flag);
    return out;
}

// A Python list of ``make(item)`` for each item (a new reference each, or
// nullptr with an exception set, which drops the list).
template <class T, class Make>
PyObject* list_of(const std::vector<T>& items, Make make) {
    PyObject* out = PyList_New(static_cast<Py_ssize_t>(items.size()));
    if (out == nullptr) return nullptr;
    for (size_t i = 0; i < items.size(); ++i) {
        PyObject* item = make(items[i]);
        if (item == nullptr) {
            Py_DECREF(out);
            return nullptr;
        }
        PyList_SET_ITEM(out, static_cast<Py_ssize_t>(i), item);
    }
    return out;
}

PyObject* times_list(const std::vector<double>& times) {
    return list_of(times, PyFloat_FromDouble);
}

bool times_from(PyObject* value, std::vector<double>* out) {
    PyObject* seq = PySequence_Fast(value, "failure times are a list of floats");
    if (seq == nullptr) return false;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    std::vector<double> times;
    times.reserve(static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
        double t = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (t == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return false;
        }
        times.push_back(t);
    }
    Py_DECREF(seq);
    *out = std::move(times);
    return true;
}

// ---- Windows: one jail's failure windows (and its ignore list) ----------------
//
// The same bookkeeping as jails.windows.PyWindows (the pure-Python twin, used where
// this extension was not built; tests/unit/test_windows.py runs both on the
// same input): per address the times of its failures within findtime of the
// latest one, in a least-recently-failed order; past max_entries addresses
// the one whose last failure is oldest is forgotten. The block path also
// reads the jail's ignore list from here, as key ranges.

struct Node {
    Key key;
    std::vector<double> times;
    Node* prev;  // towards the least recently failed
    Node* next;
};

// addresses.parse_host for the plain texts that nearly every log line has,
// with the same libc inet_pton that Python's socket.inet_pton calls. kAsk:
// a text this does not settle (not ASCII, or an IPv6 form inet_pton
// refuses, which Python's ipaddress judges); the caller asks Python.
enum class Parsed { kKey, kBad, kAsk };

Parsed parse_host(const char* text, size_t len, Key* out) {
    constexpr size_t kMaxText = 64;  // parse_host's limit, in characters
    bool dot = false, colon = false;
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = static_cast<unsigned char>(text[i]);
        if (c >= 0x80) return Parsed::kAsk;  // characters are not bytes here
        if (c == '%' || c == 0) return Parsed::kBad;  // a zone index; NUL: not an address
        dot |= c == '.';
        colon |= c == ':';
    }
    if (len == 0 || len > kMaxText) return Parsed::kBad;
    if (len >= 2 && text[0] == '[' && text[len - 1] == ']') {
        ++text;
        len -= 2;
    }
    char buf[kMaxText + 1];
    std::memcpy(buf, text, len);
    buf[len] = '\0';
    unsigned char packed[16];
    if (dot && !colon) {
        if (inet_pton(AF_INET, buf, packed) != 1) return Parsed::kBad;
        *out = Key{0, (uint64_t{packed[0]} << 24) | (uint64_t{packed[1]} << 16) |
                          (uint64_t{packed[2]} << 8) | packed[3], false};
        return Parsed::kKey;
    }
    if (inet_pton(AF_INET6, buf, packed) != 1) return Parsed::kAsk;
    uint64_t hi = 0, lo = 0;
    for (int i = 0; i < 8; ++i) hi = (hi << 8) | packed[i];
    for (int i = 8; i < 16; ++i) lo = (lo << 8) | packed[i];
    if (hi == 0 && (lo >> 32) == 0xFFFF) {  // IPv4-mapped: one offender, one identity
        *out = Key{0, lo & 0xFFFFFFFFULL, false};
    } else {
        *out = Key{hi, lo, true};
    }
    return Parsed::kKey;
}

bool key_less(const Key& a, const Key& b) {
    if (a.v6 != b.v6) return b.v6;
    if (a.hi != b.hi) return a.hi < b.hi;
    return a.lo < b.lo;
}

using Nodes = std::unordered_map<Key, Node, KeyHash>;

struct WindowsObject {
    PyObject_HEAD
    Nodes* nodes;
    Node* head;  // least recently failed
    Node* tail;
    Py_ssize_t max_entries;
    double findtime;
    Py_ssize_t maxretry;
    long long evicted;
    PyObject* resolve;  // bytes -> host_key | None, for the texts parse_host leaves to Python
    std::vector<std::pair<Key, Key>>* ignore;  // the jail's ignore list, as key ranges
    int v6_prefix;  // IPv6 failures count per this prefix (128: per address)
};

void unlink(WindowsObject* w, Node* n) {
    (n->prev != nullptr ? n->prev->next : w->head) = n->next;
    (n->next != nullptr ? n->next->prev : w->tail) = n->prev;
    n->prev = n->next = nullptr;
}

void append(WindowsObject* w, Node* n) {
    n->prev = w->tail;
    n->next = nullptr;
    (w->tail != nullptr ? w->tail->next : w->head) = n;
    w->tail = n;
}

void erase(WindowsObject* w, Nodes::iterator it) {
    unlink(w, &it->second);
    w->nodes->erase(it);
}

// One failure of ``key`` at ``t``: jails.windows.PyWindows.add. Returns its window.
Node* add_failure(WindowsObject* w, const Key& key, double t) {
    auto [it, fresh] = w->nodes->try_emplace(key);
    Node* n = &it->second;
    if (fresh) {
        n->key = key;
        // One allocation for the window's life up to maxretry, not one per doubling.
        n->times.reserve(static_cast<size_t>(std::min<Py_ssize_t>(w->maxretry, 8)));
        n->times.push_back(t);
        append(w, n);
        if (static_cast<Py_ssize_t>(w->nodes->size()) > w->max_entries) {
            erase(w, w->nodes->find(w->head->key));  // never n: max_entries >= 1
            ++w->evicted;
        }
        return n;
    }
    unlink(w, n);
    append(w, n);
    n->times.push_back(t);
    double from = t - w->findtime;
    if (n->times.front() < from) {
        std::vector<double> kept;
        for (double x : n->times)
            if (x >= from) kept.push_back(x);
        n->times = std::move(kept);
    }
    return n;
}

// Replace ``key``'s window with ``value`` (a list of times; None or empty: forget it).
bool keep(WindowsObject* w, const Key& key, PyObject* value) {
    std::vector<double> times;
    if (value != Py_None && !times_from(value, &times)) return false;
    auto it = w->nodes->find(key);
    if (times.empty()) {
        if (it != w->nodes->end()) erase(w, it);
        return true;
    }
    if (it == w->nodes->end()) {
        PyErr_SetString(PyExc_KeyError, "no window for this key");
        return false;
    }
    it->second.times = std::move(times);
    return true;
}

void Windows_dealloc(WindowsObject* self) {
    delete self->nodes;
    delete self->ignore;
    Py_XDECREF(self->resolve);
    Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyObject* Windows_new(PyTypeObject* type, PyObject*, PyObject*) {
    auto* self = reinterpret_cast<WindowsObject*>(type->tp_alloc(type, 0));
    if (self != nullptr) {
        self->nodes = nullptr;
        self->head = self->tail = nullptr;
        self->resolve = nullptr;
        self->ignore = nullptr;
        self->evicted = 0;
        self->v6_prefix = 128;
    }
    return reinterpret_cast<PyObject*>(self);
}

// Windows(max_entries: int, findtime: float, maxretry: int, resolve, ignore: list[(int, int)],
//         v6_prefix: int = 128)
int Windows_init(WindowsObject* self, PyObject* args, PyObject*) {
    Py_ssize_t max_entries, maxretry;
    double findtime;
    PyObject* resolve;
    PyObject* ranges;
    int v6_prefix = 128;
    if (!PyArg_ParseTuple(args, "ndnOO!|i", &max_entries, &findtime, &maxretry, &resolve,
                          &PyList_Type, &ranges, &v6_prefix)) {
        return -1;
    }
    if (v6_prefix < 1 || v6_prefix > 128) {
        PyErr_SetString(PyExc_ValueError, "v6_prefix from 1 to 128");
        return -1;
    }
    if (self->nodes != nullptr) {
        PyErr_SetString(PyExc_RuntimeError, "Windows already initialised");
        return -1;
    }
    if (max_entries < 1 || maxretry < 1 || !(findtime >= 0) || !PyCallable_Check(resolve)) {
        PyErr_SetString(PyExc_ValueError,
                        "max_entries and maxretry >= 1, findtime >= 0, resolve callable");
        return -1;
    }
    auto ignore = std::make_unique<std::vector<std::pair<Key, Key>>>();
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ranges); ++i) {
        PyObject* item = PyList_GET_ITEM(ranges, i);
        Key first, last;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "ignore ranges are (first key, last key)");
            return -1;
        }
        if (!key_from(PyTuple_GET_ITEM(item, 0), &first) ||
            !key_from(PyTuple_GET_ITEM(item, 1), &last)) {
            return -1;
        }
        ignore->emplace_back(first, last);
    }
    self->nodes = new Nodes();
    self->ignore = ignore.release();
    self->max_entries = max_entries;
    self->v6_prefix = v6_prefix;
    self->findtime = findtime;
    self->maxretry = maxretry;
    Py_INCREF(resolve);
    self->resolve = resolve;
    return 0;
}

// IgnoreList.has_key
bool is_ignored(const WindowsObject* w, const Key& key) {
    for (const auto& [first, last] : *w->ignore)
        if (!key_less(key, first) && !key_less(last, key)) return true;
    return false;
}

// jails.Jail._aggregate: an IPv6 key counts as its v6_prefix network (the
// network's first address), unless that network reaches an ignored range:
// then per address, so a protected neighbour is never inside a ban.
Key aggregate(const WindowsObject* w, const Key& key) {
    const int p = w->v6_prefix;
    if (!key.v6 || p >= 128) return key;
    const uint64_t hi_mask = p >= 64 ? ~0ULL : ~0ULL << (64 - p);  // p >= 1
    const uint64_t lo_mask = p <= 64 ? 0 : ~0ULL << (128 - p);
    const Key first{key.hi & hi_mask, key.lo & lo_mask, true};
    const Key last{key.hi | ~hi_mask, key.lo | ~lo_mask, true};
    for (const auto& [lo, hi] : *w->ignore)
        if (!key_less(last, lo) && !key_less(hi, first)) return key;
    return first;
}

bool ready(WindowsObject* self) {
    if (self->nodes == nullptr) PyErr_SetString(PyExc_RuntimeError, "Windows not initialised");
    return self->nodes != nullptr;
}

PyObject* Windows_add(WindowsObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (!ready(self)) return nullptr;
    Key key;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add(key, t)");
        return nullptr;
    }
    double t = PyFloat_AsDouble(args[1]);
    if ((t == -1.0 && PyErr_Occurred()) || !key_from(args[0], &key)) return nullptr;
    Node* n = add_failure(self, key, t);
    if (static_cast<Py_ssize_t>(n->times.size()) < self->maxretry) Py_RETURN_NONE;
    return times_list(n->times);
}

PyObject* Windows_keep(WindowsObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (!ready(self)) return nullptr;
    Key key;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "keep(key, times)");
        return nullptr;
    }
    if (!key_from(args[0], &key) || !keep(self, key, args[1])) return nullptr;
    Py_RETURN_NONE;
}

PyObject* Windows_count(WindowsObject* self, PyObject* arg) {
    if (!ready(self)) return nullptr;
    Key key;
    if (!key_from(arg, &key)) return nullptr;
    auto it = self->nodes->find(key);
    return PyLong_FromSize_t(it == self->nodes->end() ? 0 : it->second.times.size());
}

PyObject* Windows_by_age(WindowsObject* self, PyObject*) {
    if (!ready(self)) return nullptr;
    PyObject* out = PyList_New(0);
    for (Node* n = self->head; out != nullptr && n != nullptr; n = n->next) {
        PyObject* key = key_to(n->key);
        if (key == nullptr || PyList_Append(out, key) != 0) Py_CLEAR(out);
        Py_XDECREF(key);
    }
    return out;
}

Py_ssize_t Windows_len(WindowsObject* self) {
    return self->nodes == nullptr ? 0 : static_cast<Py_ssize_t>(self->nodes->size());
}

PyObject* Windows_evicted(WindowsObject* self, void*) {
    return PyLong_FromLongLong(self->evicted);
}

// The block path's host: parse_host above, else ``resolve``. -1 with an
// exception set if resolve raised or answered something else than an int
// or None; 0: no address; 1: ``out`` is its key.
int host_of(WindowsObject* w, const char* text, size_t len, Key* out) {
    switch (parse_host(text, len, out)) {
        case Parsed::kKey:
            return 1;
        case Parsed::kBad:
            return 0;
        case Parsed::kAsk:
            break;
    }
    PyObject* arg = PyBytes_FromStringAndSize(text, static_cast<Py_ssize_t>(len));
    PyObject* got = arg != nullptr ? PyObject_CallOneArg(w->resolve, arg) : nullptr;
    Py_XDECREF(arg);
    if (got == nullptr) return -1;
    int found = got == Py_None ? 0 : key_from(got, out) ? 1 : -1;
    Py_DECREF(got);
    return found;
}

PyMethodDef Windows_methods[] = {
    {"add", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(Windows_add)),
     METH_FASTCALL, "add(key, t) -> the window's times if it reached maxretry, else None"},
    {"keep", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(Windows_keep)),
     METH_FASTCALL, "keep(key, times): replace key's window (None or empty: forget the key)"},
    {"count", reinterpret_cast<PyCFunction>(Windows_count), METH_O,
     "count(key) -> failures in key's window"},
    {"by_age", reinterpret_cast<PyCFunction>(Windows_by_age), METH_NOARGS,
     "by_age() -> the keys, least recently failed first"},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef Windows_getset[] = {
    {"evicted", reinterpret_cast<getter>(Windows_evicted), nullptr,
     "addresses forgotten to stay within max_entries", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PySequenceMethods Windows_sequence = {};

PyTypeObject WindowsType = {
    PyVarObject_HEAD_INIT(nullptr, 0)
};

// ---- Sessions: a paired filter's hits settled per session -----------------------
//
// The same bookkeeping as matching/sessions.py's Sessions (the reference, and
// the twin where this extension was not built; tests/unit/test_sessions_native.py
// feeds both the same input): a session's helper hits wait until the session
// shows what they were. Matcher.track settles a block's hits here on the way
// to the windows; ``settle`` does it for the hits of the per-record path, so
// one state serves both paths of a jail.

enum Kind : int {
    kFailure = 0, kHelper = 1, kOnce = 2, kEnd = 3, kSuccess = 4, kOrigin = 5, kUnaddressed = 6
};

// A hit held back: its address, rule, log time, the daemon time it arrived,
// and, when it came from the per-record path, its own tuple (owned).
struct Held {
    Key key;
    int rule;
    double t;
    double arrived;
    PyObject* hit;
    Held(const Key& k, int r, double when, double at, PyObject* h)
        : key(k), rule(r), t(when), arrived(at), hit(h) {
        Py_XINCREF(hit);
    }
    Held(Held&& o) noexcept
        : key(o.key), rule(o.rule), t(o.t), arrived(o.arrived), hit(o.hit) {
        o.hit = nullptr;
    }
    Held& operator=(Held&& o) noexcept {
        if (this != &o) {
            Py_XDECREF(hit);
            key = o.key;
            rule = o.rule;
            t = o.t;
            arrived = o.arrived;
            hit = o.hit;
            o.hit = nullptr;
        }
        return *this;
    }
    Held(const Held&) = delete;
    Held& operator=(const Held&) = delete;
    ~Held() { Py_XDECREF(hit); }
};

// An insertion-ordered map, as a Python dict: popping and re-adding moves a
// key to the end; ``front`` is the oldest.
template <class V>
struct Ordered {
    using Items = std::list<std::pair<std::string, V>>;
    Items items;
    std::unordered_map<std::string, typename Items::iterator> index;

    V* find(const std::string& k) {
        auto it = index.find(k);
        return it == index.end() ? nullptr : &it->second->second;
    }
    bool contains(const std::string& k) const { return index.count(k) != 0; }
    V& add(const std::string& k) {  // k must not be there
        items.emplace_back(k, V{});
        index.emplace(k, std::prev(items.end()));
        return items.back().second;
    }
    bool take(const std::string& k, V* out) {  // pop k, its value into out
        auto it = index.find(k);
        if (it == index.end()) return false;
        if (out != nullptr) *out = std::move(it->second->second);
        items.erase(it->second);
        index.erase(it);
        return true;
    }
    void erase(typename Items::iterator it) {
        index.erase(it->first);
        items.erase(it);
    }
    size_t size() const { return items.size(); }
};

// The address a session's origin line named, and its log time.
struct Origin {
    Key key;
    double t;
};

struct SessionState {
    std::vector<int> kinds;  // per rule index
    std::unordered_map<std::string, int> rule_of;  // rule name -> index
    double hold;
    double grace;  // an origin older than this (log time) is another connection's
    size_t max;
    long long unattributed = 0;  // unaddressed hits no origin could count
    Ordered<Origin> origins;  // sessions whose origin line named their address
    double latest = -std::numeric_limits<double>::infinity();
    Ordered<std::vector<Held>> pending;  // sessions with helpers held back
    Ordered<bool> failed;  // sessions with a counted failure
};

struct SessionsObject {
    PyObject_HEAD
    SessionState* s;
    PyObject* make_hit;  // (key, rule index, t) -> a hit tuple, for the per-record path
};

// The session of a line with no pid: its address stands for it ("@" + the key
// in hex, which no "prog[pid]" tag can be: those end in "]").
std::string address_session(const Key& key) {
    char buf[64];
    int n = std::snprintf(buf, sizeof buf, "@%d:%llx:%llx", key.v6 ? 6 : 4,
                          static_cast<unsigned long long>(key.hi),
                          static_cast<unsigned long long>(key.lo));
    return std::string(buf, static_cast<size_t>(n));
}

void mark_failed(SessionState& s, const std::string& sid) {
    s.failed.take(sid, nullptr);
    if (s.failed.size() >= s.max) s.failed.erase(s.failed.items.begin());
    s.failed.add(sid) = true;
}

// The one count of ``sid``'s held hits, its first, to ``emit`` (Sessions._release).
template <class Emit>
bool release(SessionState& s, const std::string& sid, Emit& emit) {
    std::vector<Held> held;
    if (!s.pending.take(sid, &held) || held.empty()) return true;
    return emit(held.front());
}

// A success (Accepted): the session's helpers were no failure.
void forgive(SessionState& s, const std::string& sid) {
    s.pending.take(sid, nullptr);
    s.failed.take(sid, nullptr);
    s.origins.take(sid, nullptr);
}

enum Unaddressed { kDropped = 0, kCounts = 1, kUnattributed = 2 };

// An unaddressed hit at log time ``t`` of session ``sid`` (nullptr: the line
// named none): Sessions._unaddressed. kCounts with ``*key`` its origin's address.
template <class Emit>
int unaddressed(SessionState& s, const std::string* sid, double t, Emit& emit, Key* key) {
    if (sid != nullptr && s.pending.contains(*sid)) {
        if (!release(s, *sid, emit)) return -1;  // the session is over
        mark_failed(s, *sid);
        return kDropped;
    }
    if (sid != nullptr && s.failed.contains(*sid)) return kDropped;
    Origin* origin = sid != nullptr ? s.origins.find(*sid) : nullptr;
    if (origin == nullptr || !(t - origin->t >= 0.0 && t - origin->t <= s.grace)) {
        ++s.unattributed;
        return kUnattributed;
    }
    *key = origin->key;
    mark_failed(s, *sid);
    return kCounts;
}

// One match of kind ``kind`` (not success) in session ``sid``: Sessions.settle's
// loop body. ``emit`` receives each hit that counts now, in the reference's order.
template <class Emit>
bool settle_one(SessionState& s, int kind, const std::string& sid, Held&& h, Emit& emit) {
    switch (kind) {
        case kHelper: {
            std::vector<Held>* held = s.pending.find(sid);
            if (held != nullptr) {
                held->push_back(std::move(h));
                return true;
            }
            if (s.pending.size() >= s.max) {
                std::string oldest = s.pending.items.front().first;
                if (!release(s, oldest, emit)) return false;
            }
            s.pending.add(sid).push_back(std::move(h));
            return true;
        }
        case kOnce:
            if (s.pending.contains(sid)) {
                if (!release(s, sid, emit)) return false;  // the session is over
                mark_failed(s, sid);
                return true;
            }
            if (s.failed.contains(sid)) return true;
            mark_failed(s, sid);
            return emit(h);
        case kEnd:
            if (s.pending.contains(sid) && !release(s, sid, emit)) return false;
            s.failed.take(sid, nullptr);
            s.origins.take(sid, nullptr);
            return true;
        case kOrigin:
            if (!sid.empty() && sid[0] != '@') {  // by its address: nothing to learn
                s.origins.take(sid, nullptr);
                if (s.origins.size() >= s.max) s.origins.erase(s.origins.items.begin());
                s.origins.add(sid) = Origin{h.key, h.t};
            }
            return true;
        default:  // a failure: its session's helpers were this same attempt
            s.pending.take(sid, nullptr);
            mark_failed(s, sid);
            return emit(h);
    }
}

// The sessions one of whose helpers was held HOLD seconds (of log time, or of
// the daemon's clock) count now, once each (Sessions._expired), in order.
template <class Emit>
bool expire(SessionState& s, double now, Emit& emit) {
    std::vector<Held> out;
    auto it = s.pending.items.begin();
    while (it != s.pending.items.end()) {
        std::vector<Held>& held = it->second;
        bool due = false;
        for (const Held& h : held)
            due = due || s.latest - h.t >= s.hold || now - h.arrived >= s.hold;
        auto next = std::next(it);
        if (due) {
            if (!held.empty()) out.push_back(std::move(held.front()));
            s.pending.erase(it);
        }
        it = next;
    }
    for (Held& h : out)
        if (!emit(h)) return false;
    return true;
}

void Sessions_dealloc(SessionsObject* self) {
    delete self->s;
    Py_XDECREF(self->make_hit);
    Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyObject* Sessions_new(PyTypeObject* type, PyObject*, PyObject*) {
    auto* self = reinterpret_cast<SessionsObject*>(type->tp_alloc(type, 0));
    if (self != nullptr) {
        self->s = nullptr;
        self->make_hit = nullptr;
    }
    return reinterpret_cast<PyObject*>(self);
}

// Sessions(names: list[str], kinds: list[int], make_hit, hold: float, max_sessions: int,
//          grace: float = 120.0)
int Sessions_init(SessionsObject* self, PyObject* args, PyObject*) {
    PyObject* names;
    PyObject* kinds;
    PyObject* make_hit;
    double hold;
    Py_ssize_t max_sessions;
    double grace = 120.0;
    if (!PyArg_ParseTuple(args, "O!O!Odn|d", &PyList_Type, &names, &PyList_Type, &kinds,
                          &make_hit, &hold, &max_sessions, &grace)) {
        return -1;
    }
    if (self->s != nullptr) {
        PyErr_SetString(PyExc_RuntimeError, "Sessions already initialised");
        return -1;
    }
    if (PyList_GET_SIZE(names) != PyList_GET_SIZE(kinds) || max_sessions < 1 ||
        !PyCallable_Check(make_hit)) {
        PyErr_SetString(PyExc_ValueError,
                        "one kind per rule name, max_sessions >= 1, make_hit callable");
        return -1;
    }
    auto s = std::make_unique<SessionState>();
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); ++i) {
        Py_ssize_t len;
        const char* name = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(names, i), &len);
        long kind = PyLong_AsLong(PyList_GET_ITEM(kinds, i));
        if (name == nullptr || (kind == -1 && PyErr_Occurred())) return -1;
        if (kind < kFailure || kind > kUnaddressed) {
            PyErr_SetString(PyExc_ValueError, "a rule kind is 0 to 6");
            return -1;
        }
        s->kinds.push_back(static_cast<int>(kind));
        s->rule_of.emplace(std::string(name, static_cast<size_t>(len)), static_cast<int>(i));
    }
    s->hold = hold;
    s->grace = grace;
    s->max = static_cast<size_t>(max_sessions);
    self->s = s.release();
    Py_INCREF(make_hit);
    self->make_hit = make_hit;
    return 0;
}

bool sessions_ready(SessionsObject* self) {
    if (self->s == nullptr) PyErr_SetString(PyExc_RuntimeError, "Sessions not initialised");
    return self->s != nullptr;
}

// The per-record path's hit for ``h``: its own tuple, else make_hit(key, rule, t).
PyObject* hit_object(SessionsObject* self, const Held& h) {
    if (h.hit != nullptr) {
        Py_INCREF(h.hit);
        return h.hit;
    }
    PyObject* key = key_to(h.key);
    PyObject* out = key != nullptr
        ? PyObject_CallFunction(self->make_hit, "Nid", key, h.rule, h.t) : nullptr;
    return out;
}

// settle(hits, sessions, now) -> the hits that count now: Sessions.settle for the
// per-record path's hits (engine.Hit tuples), sessions[i] the session of hits[i].
PyObject* Sessions_settle(SessionsObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (!sessions_ready(self)) return nullptr;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "settle(hits, sessions, now)");
        return nullptr;
    }
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred()) return nullptr;
    PyObject* hits = PySequence_Fast(args[0], "hits are a sequence");
    if (hits == nullptr) return nullptr;
    PyObject* sids = PySequence_Fast(args[1], "sessions are a sequence");
    PyObject* out = sids != nullptr ? PyList_New(0) : nullptr;
    SessionState& s = *self->s;
    auto emit = [&](const Held& h) {
        PyObject* hit = hit_object(self, h);
        bool ok = hit != nullptr && PyList_Append(out, hit) == 0;
        Py_XDECREF(hit);
        return ok;
    };
    bool ok = out != nullptr;
    if (ok && PySequence_Fast_GET_SIZE(hits) != PySequence_Fast_GET_SIZE(sids)) {
        PyErr_SetString(PyExc_ValueError, "one session per hit");
        ok = false;
    }
    for (Py_ssize_t i = 0; ok && i < PySequence_Fast_GET_SIZE(hits); ++i) {
        PyObject* hit = PySequence_Fast_GET_ITEM(hits, i);
        PyObject* sid_obj = PySequence_Fast_GET_ITEM(sids, i);
        if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 6) {
            PyErr_SetString(PyExc_TypeError, "a hit is (end, status, rule, host, key, t)");
            ok = false;
            break;
        }
        double t = PyFloat_AsDouble(PyTuple_GET_ITEM(hit, 5));
        const char* status = PyUnicode_AsUTF8(PyTuple_GET_ITEM(hit, 1));
        if (status == nullptr || (t == -1.0 && PyErr_Occurred())) {
            ok = false;
            break;
        }
        if (t > s.latest) s.latest = t;
        bool success = std::strcmp(status, "success") == 0;
        if (std::strcmp(status, "session") == 0) {  // an unaddressed rule's hit
            std::string session;
            const std::string* sid = nullptr;
            if (sid_obj != Py_None) {
                Py_ssize_t len;
                const char* text = PyUnicode_AsUTF8AndSize(sid_obj, &len);
                if (text == nullptr) {
                    ok = false;
                    break;
                }
                session.assign(text, static_cast<size_t>(len));
                sid = &session;
            }
            Key key;
            int got = unaddressed(s, sid, t, emit, &key);
            if (got == kUnattributed) {
                ok = PyList_Append(out, hit) == 0;
            } else if (got == kCounts) {
                // make_hit's tuple, with this hit's index and rule
                int rule = -1;
                PyObject* name = PyTuple_GET_ITEM(hit, 2);
                const char* text = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : nullptr;
                if (text != nullptr) {
                    auto found = s.rule_of.find(text);
                    if (found != s.rule_of.end()) rule = found->second;
                }
                PyObject* made = rule >= 0 ? hit_object(self, Held(key, rule, t, now, nullptr))
                                           : nullptr;
                PyObject* counted = made != nullptr && PyTuple_Check(made) &&
                                            PyTuple_GET_SIZE(made) == 6
                    ? PyTuple_Pack(6, PyTuple_GET_ITEM(hit, 0), PyTuple_GET_ITEM(made, 1),
                                   PyTuple_GET_ITEM(hit, 2), PyTuple_GET_ITEM(made, 3),
                                   PyTuple_GET_ITEM(made, 4), PyTuple_GET_ITEM(hit, 5))
                    : nullptr;
                if (counted == nullptr && !PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "an unaddressed hit of an unknown rule");
                ok = counted != nullptr && PyList_Append(out, counted) == 0;
                Py_XDECREF(made);
                Py_XDECREF(counted);
            } else {
                ok = got == kDropped;
            }
            continue;
        }
        if (!success && (std::strcmp(status, "match") != 0 || PyTuple_GET_ITEM(hit, 3) == Py_None)) {
            ok = PyList_Append(out, hit) == 0;
            continue;
        }
        Key key;
        if (!key_from(PyTuple_GET_ITEM(hit, 4), &key)) {
            ok = false;
            break;
        }
        std::string sid;
        if (sid_obj == Py_None) {
            sid = address_session(key);
        } else {
            Py_ssize_t len;
            const char* text = PyUnicode_AsUTF8AndSize(sid_obj, &len);
            if (text == nullptr) {
                ok = false;
                break;
            }
            sid.assign(text, static_cast<size_t>(len));
        }
        if (success) {
            forgive(s, sid);
            continue;
        }
        int rule = -1;
        PyObject* name = PyTuple_GET_ITEM(hit, 2);
        if (PyUnicode_Check(name)) {
            const char* text = PyUnicode_AsUTF8(name);
            if (text == nullptr) {
                ok = false;
                break;
            }
            auto found = s.rule_of.find(text);
            if (found != s.rule_of.end()) rule = found->second;
        }
        int kind = rule < 0 ? kFailure : s.kinds[static_cast<size_t>(rule)];
        ok = settle_one(s, kind, sid, Held(key, rule, t, now, hit), emit);
    }
    if (ok && s.pending.size() != 0) ok = expire(s, now, emit);
    Py_DECREF(hits);
    Py_XDECREF(sids);
    if (!ok) {
        Py_XDECREF(out);
        return nullptr;
    }
    return out;
}

// flush() -> each session's held hits as one, now (the input is over).
PyObject* Sessions_flush(SessionsObject* self, PyObject*) {
    if (!sessions_ready(self)) return nullptr;
    PyObject* out = PyList_New(0);
    if (out == nullptr) return nullptr;
    auto& items = self->s->pending.items;
    bool ok = true;
    for (auto& [sid, held] : items) {  // one count per session: its first helper
        if (held.empty()) continue;
        PyObject* hit = hit_object(self, held.front());
        ok = hit != nullptr && PyList_Append(out, hit) == 0;
        Py_XDECREF(hit);
        if (!ok) break;
    }
    items.clear();
    self->s->pending.index.clear();
    if (!ok) Py_CLEAR(out);
    return out;
}

Py_ssize_t Sessions_len(SessionsObject* self) {
    return self->s == nullptr ? 0 : static_cast<Py_ssize_t>(self->s->pending.size());
}

PyObject* Sessions_unattributed(SessionsObject* self, void*) {
    return PyLong_FromLongLong(self->s == nullptr ? 0 : self->s->unattributed);
}

PyGetSetDef Sessions_getset[] = {
    {"unattributed", reinterpret_cast<getter>(Sessions_unattributed), nullptr,
     "unaddressed hits that no origin could count", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyMethodDef Sessions_methods[] = {
    {"settle", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(Sessions_settle)),
     METH_FASTCALL, "settle(hits, sessions, now) -> the hits that count now"},
    {"flush", reinterpret_cast<PyCFunction>(Sessions_flush), METH_NOARGS,
     "flush() -> every held hit"},
    {nullptr, nullptr, 0, nullptr},
};

PySequenceMethods Sessions_sequence = {};

PyTypeObject SessionsType = {
    PyVarObject_HEAD_INIT(nullptr, 0)
};

// ---- Matcher: a text filter's block scan ----------------------------------------

struct Rule {
    std::unique_ptr<re2::RE2> regex;
    int host_group;  // capture group index of the host (1-based, as RE2 counts)
};

struct MatcherObject {
    PyObject_HEAD
    std::vector<Rule>* rules;
    re2::RE2::Set* set;
    std::vector<std::string>* programs;
    re2::RE2* ignore;  // the filter's ignoreregex, searched in the message; or nullptr
    std::vector<std::vector<std::string>>* heads;  // per rule, its literal heads; or nullptr
    bool header;
};

void Matcher_dealloc(MatcherObject* self) {
    delete self->rules;
    delete self->set;
    delete self->programs;
    delete self->ignore;
    delete self->heads;
    Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

PyObject* Matcher_new(PyTypeObject* type, PyObject*, PyObject*) {
    auto* self = reinterpret_cast<MatcherObject*>(type->tp_alloc(type, 0));
    if (self != nullptr) {
        self->rules = nullptr;
        self->set = nullptr;
        self->programs = nullptr;
        self->ignore = nullptr;
        self->heads = nullptr;
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

// Matcher(patterns: list[bytes], host_groups: list[int], programs: list[bytes], header: bool,
//         ignore: bytes | None = None)
int Matcher_init(MatcherObject* self, PyObject* args, PyObject*) {
    PyObject* patterns;
    PyObject* groups;
    PyObject* programs;
    int header;
    PyObject* ignore = Py_None;
    PyObject* heads = Py_None;
    if (!PyArg_ParseTuple(args, "O!O!O!p|OO", &PyList_Type, &patterns, &PyList_Type, &groups,
                          &PyList_Type, &programs, &header, &ignore, &heads)) {
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
        // Group 0 (the whole match): an unaddressed rule, whose line has no address.
        if (!regex->ok() || group < 0 || group > regex->NumberOfCapturingGroups() ||
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
    std::unique_ptr<re2::RE2> ignore_regex;
    if (ignore != Py_None) {
        std::string pattern;
        if (!as_string(ignore, &pattern)) return -1;
        ignore_regex = std::make_unique<re2::RE2>(pattern, options);
        if (!ignore_regex->ok()) {
            PyErr_Format(PyExc_ValueError, "ignoreregex: %s", ignore_regex->error().c_str());
            return -1;
        }
    }
    std::unique_ptr<std::vector<std::vector<std::string>>> rule_heads;
    if (heads != Py_None) {
        if (!PyList_Check(heads) || PyList_GET_SIZE(heads) != n) {
            PyErr_SetString(PyExc_ValueError, "one list of literal heads per pattern");
            return -1;
        }
        rule_heads = std::make_unique<std::vector<std::vector<std::string>>>();
        for (Py_ssize_t i = 0; i < n; ++i) {
            PyObject* list = PyList_GET_ITEM(heads, i);
            if (!PyList_Check(list) || PyList_GET_SIZE(list) == 0) {
                PyErr_SetString(PyExc_ValueError, "every rule needs a literal head");
                return -1;
            }
            std::vector<std::string> mine;
            for (Py_ssize_t j = 0; j < PyList_GET_SIZE(list); ++j) {
                std::string head;
                if (!as_string(PyList_GET_ITEM(list, j), &head)) return -1;
                mine.push_back(std::move(head));
            }
            rule_heads->push_back(std::move(mine));
        }
    }
    self->heads = rule_heads.release();
    self->rules = rules.release();
    self->set = set.release();
    self->programs = names.release();
    self->ignore = ignore_regex.release();
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

bool digit(char c) { return c >= '0' && c <= '9'; }
bool visible(char c) { return c >= '!' && c <= '~'; }  // [!-~]

// The message start of a line with the plain syslog header, exactly as
// prefix.plain_header defines it (tests/unit/test_header.py holds the two,
// and prefix.split_syslog, to one corpus): "Mmm dd hh:mm:ss " (a known
// month; the day's first digit may be a space), a host of 1 to 255 visible
// characters not ending in ':' and a space, then a tag of 1 to 100 visible characters other
// than ":", and ": ". nullptr for any other line; ``tag``/``tag_len`` give the tag.
const char* plain_header(const char* line, const char* nl, const char** tag, size_t* tag_len) {
    static const char kMonths[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    if (nl - line < 16) return nullptr;
    bool month = false;
    for (int m = 0; m < 12 && !month; ++m) month = std::memcmp(line, kMonths + 3 * m, 3) == 0;
    if (!month || line[3] != ' ' || !(line[4] == ' ' || digit(line[4])) || !digit(line[5]) ||
        line[6] != ' ' || !digit(line[7]) || !digit(line[8]) || line[9] != ':' ||
        !digit(line[10]) || !digit(line[11]) || line[12] != ':' || !digit(line[13]) ||
        !digit(line[14]) || line[15] != ' ') {
        return nullptr;
    }
    const char* p = line + 16;
    while (p < nl && visible(*p)) ++p;
    if (p == line + 16 || p - (line + 16) > 255 || p >= nl || *p != ' ') return nullptr;
    // A "host" ending in ':' is a tag without a host name ("sshd[1]: msg"), which
    // prefix.strip_syslog reads differently: the per-record path decides.
    if (p[-1] == ':') return nullptr;
    const char* from = ++p;
    while (p < nl && visible(*p) && *p != ':') ++p;
    if (p == from || p - from > 100 || nl - p < 2 || p[0] != ':' || p[1] != ' ') return nullptr;
    *tag = from;
    *tag_len = static_cast<size_t>(p - from);
    return p + 2;
}

// The session of a line's syslog tag, as prefix.session_of reads it: the tag
// itself when it is ``prog[pid]`` (pid: ASCII digits, prog: no "["), else none.
bool tag_session(const char* tag, size_t len, std::string* out) {
    if (tag == nullptr || len < 3 || tag[len - 1] != ']') return false;
    const char* bracket = static_cast<const char*>(std::memchr(tag, '[', len));
    if (bracket == nullptr || bracket + 1 >= tag + len - 1) return false;
    for (const char* p = bracket + 1; p < tag + len - 1; ++p)
        if (!digit(*p)) return false;
    out->assign(tag, len);
    return true;
}

struct Hit {
    Py_ssize_t line_start, line_end, rule, host_start, host_end;
};

// The first rule in file order that matches ``text`` at its start, with its
// groups up to the host's in ``groups``; -1 for none. Where every rule has
// literal heads (engine's literal_prefixes: every match starts with one of
// them, the per-record path's dispatch), only rules whose head the text
// starts with run, in file order: most lines run one regex, noise none.
// Otherwise one RE2::Set pass over all rules says which match.
int first_rule(const MatcherObject* self, const re2::StringPiece& text, std::vector<int>* matched,
               re2::StringPiece* groups) {
    const std::vector<Rule>& rules = *self->rules;
    if (self->heads != nullptr) {
        for (size_t r = 0; r < rules.size(); ++r) {
            bool candidate = false;
            for (const std::string& head : (*self->heads)[r]) {
                if (text.size() >= head.size() &&
                    std::memcmp(text.data(), head.data(), head.size()) == 0) {
                    candidate = true;
                    break;
                }
            }
            if (candidate && rules[r].regex->Match(text, 0, text.size(), re2::RE2::ANCHOR_START,
                                                   groups, rules[r].host_group + 1)) {
                return static_cast<int>(r);
            }
        }
        return -1;
    }
    matched->clear();
    if (!self->set->Match(text, matched) || matched->empty()) return -1;
    int first = (*matched)[0];
    for (int k : *matched) first = k < first ? k : first;
    const Rule& rule = rules[static_cast<size_t>(first)];
    return rule.regex->Match(text, 0, text.size(), re2::RE2::ANCHOR_START, groups,
                             rule.host_group + 1) ? first : -1;
}

// The lines of [base, end) that a rule matches, in order. Called without the
// GIL. False if a line lacks the plain header (plain_header). With ``drop_ignored``,
// lines whose message the filter's ignoreregex finds are left out.
bool scan_block(const MatcherObject* self, const char* base, const char* end,
                bool drop_ignored, std::vector<Hit>* hits) {
    std::vector<int> matched;
    re2::StringPiece groups[64];
    const char* line = base;
    while (line < end) {
        const char* nl = static_cast<const char*>(
            std::memchr(line, '\n', static_cast<size_t>(end - line)));
        if (nl == nullptr) nl = end;
        const char* message = line;
        if (nl > line && self->header) {
            const char* tag;
            size_t tag_len;
            message = plain_header(line, nl, &tag, &tag_len);
            if (message == nullptr) return false;
            if (!program_allowed(*self->programs, tag, tag_len)) {
                line = nl + 1;
                continue;
            }
        }
        if (nl > line) {
            re2::StringPiece text(message, static_cast<size_t>(nl - message));
            int first = first_rule(self, text, &matched, groups);
            if (first >= 0 &&
                !(drop_ignored && self->ignore != nullptr &&
                  self->ignore->Match(text, 0, text.size(), re2::RE2::UNANCHORED, nullptr, 0))) {
                const re2::StringPiece& h = groups[(*self->rules)[static_cast<size_t>(first)]
                                                       .host_group];
                // A host group that took no part: an empty host (bad-host), as
                // the per-record path makes of it.
                Py_ssize_t from = h.data() == nullptr ? -1 : h.data() - base;
                Py_ssize_t to = h.data() == nullptr ? -1 : from + h.size();
                hits->push_back(Hit{line - base, nl - base, first, from, to});
            }
        }
        line = nl + 1;
    }
    return true;
}

bool matcher_ready(MatcherObject* self) {
    if (self->rules == nullptr) PyErr_SetString(PyExc_RuntimeError, "Matcher not initialised");
    return self->rules != nullptr;
}

bool scan_buffer(MatcherObject* self, const Py_buffer& view, bool drop_ignored,
                 std::vector<Hit>* hits) {
    const char* base = static_cast<const char*>(view.buf);
    bool ok;
    Py_BEGIN_ALLOW_THREADS
    ok = scan_block(self, base, base + view.len, drop_ignored, hits);
    Py_END_ALLOW_THREADS
    if (!ok) PyErr_SetString(PyExc_ValueError, "a line without the plain syslog header");
    return ok;
}

PyObject* Matcher_scan(MatcherObject* self, PyObject* arg) {
    if (!matcher_ready(self)) return nullptr;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) != 0) return nullptr;
    std::vector<Hit> hits;
    bool ok = scan_buffer(self, view, false, &hits);
    PyBuffer_Release(&view);
    if (!ok) return nullptr;
    return list_of(hits, [](const Hit& h) {
        return Py_BuildValue("(nnnn)", h.line_end, h.rule, h.host_start, h.host_end);
    });
}

constexpr size_t kStamp = 15;  // "Nov 26 04:57:45"

// track(block, windows, now, oldest, latest, stamp_time, on_full, sessions=None)
//     -> (failures per rule index, ignored, stale), or None for a block with a
//        line without the plain header (nothing counted)
//
// jails.Jail.add_hits over engine.TextFilter.scan_lines(block), in one pass
// (Jail.add_lines is the caller). For each failure: the host through the
// windows' host cache (resolve on a miss); a host that is no address, or a
// line the ignoreregex finds, is no failure. The line's time is
// stamp_time(the 15-byte stamp) - called when the stamp changes - or ``now``
// for a filter without a header; a time past ``latest`` becomes ``now``, one
// before ``oldest`` is stale. A window that reaches maxretry goes to
// on_full(key, rule index, times), whose answer replaces it (None: forget).
// With ``sessions`` (a paired filter), every match is settled there first, in
// its line's session (the tag ``prog[pid]``, else its address), and only the
// hits that count then reach the windows, in the order the reference
// (Sessions.settle, then Jail.add_hits) gives them.
// The block is scanned before anything is counted; an exception from a
// callback stops the pass where it was raised.
PyObject* Matcher_track(MatcherObject* self, PyObject* const* args, Py_ssize_t nargs) {
    if (!matcher_ready(self)) return nullptr;
    double now, oldest, latest;
    if ((nargs != 7 && nargs != 8) || Py_TYPE(args[1]) != &WindowsType ||
        (nargs == 8 && args[7] != Py_None && Py_TYPE(args[7]) != &SessionsType)) {
        PyErr_SetString(PyExc_TypeError,
                        "track(block, windows, now, oldest, latest, stamp_time, on_full, "
                        "sessions=None)");
        return nullptr;
    }
    auto* w = reinterpret_cast<WindowsObject*>(args[1]);
    PyObject* stamp_time = args[5];
    PyObject* on_full = args[6];
    SessionState* paired = nullptr;
    if (nargs == 8 && args[7] != Py_None) {
        auto* so = reinterpret_cast<SessionsObject*>(args[7]);
        if (!sessions_ready(so)) return nullptr;
        paired = so->s;
        if (paired->kinds.size() != self->rules->size()) {
            PyErr_SetString(PyExc_ValueError, "sessions for another rule set");
            return nullptr;
        }
    }
    now = PyFloat_AsDouble(args[2]);
    oldest = PyFloat_AsDouble(args[3]);
    latest = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred() || !ready(w)) return nullptr;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) != 0) return nullptr;
    std::vector<Hit> hits;
    if (!scan_buffer(self, view, true, &hits)) {  // nothing counted: the caller decides
        PyErr_Clear();
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    const char* base = static_cast<const char*>(view.buf);
    std::vector<long long> counts(self->rules->size(), 0);
    long long ignored = 0;
    long long stale = 0;
    // One failure that counts (Jail.add_hits' loop body).
    auto count = [&](const Key& host, int rule, double line_t) -> bool {
        ++counts[static_cast<size_t>(rule)];
        if (is_ignored(w, host)) {
            ++ignored;
            return true;
        }
        const Key key = aggregate(w, host);
        double t = line_t > latest ? now : line_t;
        if (t < oldest) {  // old lines (a resumed or replayed log) never ban anyone
            ++stale;
            return true;
        }
        Node* node = add_failure(w, key, t);
        if (static_cast<Py_ssize_t>(node->times.size()) < w->maxretry) return true;
        PyObject* key_obj = key_to(key);
        PyObject* times = times_list(node->times);
        PyObject* rule_obj = PyLong_FromLong(rule);
        PyObject* kept = key_obj != nullptr && times != nullptr && rule_obj != nullptr
            ? PyObject_CallFunctionObjArgs(on_full, key_obj, rule_obj, times, nullptr) : nullptr;
        Py_XDECREF(key_obj);
        Py_XDECREF(times);
        Py_XDECREF(rule_obj);
        bool applied = kept != nullptr && keep(w, key, kept);
        Py_XDECREF(kept);
        return applied;
    };
    auto emit = [&](const Held& h) { return count(h.key, h.rule, h.t); };
    bool failed = false;
    const char* last_stamp = nullptr;
    double last_t = now;  // without a header the record's time is unknown: now
    std::string sid;
    auto line_time = [&](const Hit& hit) -> bool {  // last_t for this hit's line
        const char* stamp = base + hit.line_start;
        if (!self->header || (last_stamp != nullptr && std::memcmp(stamp, last_stamp, kStamp) == 0))
            return true;
        PyObject* text = PyBytes_FromStringAndSize(stamp, kStamp);
        PyObject* got = text != nullptr ? PyObject_CallOneArg(stamp_time, text) : nullptr;
        Py_XDECREF(text);
        double t = got != nullptr ? PyFloat_AsDouble(got) : -1.0;
        Py_XDECREF(got);
        if (got == nullptr || (t == -1.0 && PyErr_Occurred())) return false;
        last_stamp = stamp;
        last_t = t;
        return true;
    };
    for (const Hit& hit : hits) {
        if ((*self->rules)[static_cast<size_t>(hit.rule)].host_group == 0) {
            // An unaddressed rule (a paired filter's: its kind says so): counts
            // under its session's origin, as Sessions.settle's "session" hits.
            if (paired == nullptr) continue;
            if (!line_time(hit)) {
                failed = true;
                break;
            }
            if (last_t > paired->latest) paired->latest = last_t;
            const char* tag = nullptr;
            size_t tag_len = 0;
            if (self->header) plain_header(base + hit.line_start, base + hit.line_end, &tag, &tag_len);
            bool named = tag_session(tag, tag_len, &sid);
            Key key;
            int got = unaddressed(*paired, named ? &sid : nullptr, last_t, emit, &key);
            if (got < 0 || (got == kCounts && !count(key, static_cast<int>(hit.rule), last_t))) {
                failed = true;
                break;
            }
            continue;
        }
        if (hit.host_start < 0) {  // bad-host: no address, no failure
            if (paired != nullptr && paired->latest < 0.0) paired->latest = 0.0;
            continue;
        }
        Key key;
        int host = host_of(w, base + hit.host_start,
                           static_cast<size_t>(hit.host_end - hit.host_start), &key);
        if (host < 0) {
            failed = true;
            break;
        }
        if (host == 0) {  // the reference's bad-host hit has the time 0.0
            if (paired != nullptr && paired->latest < 0.0) paired->latest = 0.0;
            continue;
        }
        if (!line_time(hit)) {
            failed = true;
            break;
        }
        if (paired == nullptr) {
            if (!count(key, static_cast<int>(hit.rule), last_t)) {
                failed = true;
                break;
            }
            continue;
        }
        if (last_t > paired->latest) paired->latest = last_t;
        const char* tag = nullptr;
        size_t tag_len = 0;
        if (self->header) plain_header(base + hit.line_start, base + hit.line_end, &tag, &tag_len);
        if (!tag_session(tag, tag_len, &sid)) sid = address_session(key);
        int kind = paired->kinds[static_cast<size_t>(hit.rule)];
        if (kind == kSuccess) {
            forgive(*paired, sid);
            continue;
        }
        if (!settle_one(*paired, kind, sid, Held(key, static_cast<int>(hit.rule), last_t, now,
                                                 nullptr), emit)) {
            failed = true;
            break;
        }
    }
    if (!failed && paired != nullptr && paired->pending.size() != 0)
        failed = !expire(*paired, now, emit);
    PyBuffer_Release(&view);
    if (failed) return nullptr;
    PyObject* per_rule = list_of(counts, PyLong_FromLongLong);
    if (per_rule == nullptr) return nullptr;
    return Py_BuildValue("(NLL)", per_rule, ignored, stale);
}

// tag_sessions(block, ends) -> for each line end, the session of that line
// (prefix.session_of): "prog[pid]", None for a plain syslog header without a
// pid, False for a line without the plain header (Python reads it).
PyObject* tag_sessions(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "tag_sessions(block, ends)");
        return nullptr;
    }
    PyObject* ends = PySequence_Fast(args[1], "ends are a sequence of ints");
    if (ends == nullptr) return nullptr;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) != 0) {
        Py_DECREF(ends);
        return nullptr;
    }
    const char* base = static_cast<const char*>(view.buf);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ends);
    PyObject* out = PyList_New(n);
    Py_ssize_t last_end = -1;
    PyObject* last = nullptr;  // borrowed from out
    std::string sid;
    for (Py_ssize_t i = 0; out != nullptr && i < n; ++i) {
        Py_ssize_t end = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(ends, i));
        if (end == -1 && PyErr_Occurred()) {
            Py_CLEAR(out);
            break;
        }
        if (end < 0 || end > view.len) {
            PyErr_SetString(PyExc_ValueError, "a line end outside the block");
            Py_CLEAR(out);
            break;
        }
        PyObject* item;
        if (end == last_end && last != nullptr) {
            item = last;  // repeats of one line
            Py_INCREF(item);
        } else {
            const char* nl = base + end;
            const char* line = base;
            for (const char* p = nl; p > base; --p) {
                if (p[-1] == '\n') {
                    line = p;
                    break;
                }
            }
            const char* tag = nullptr;
            size_t tag_len = 0;
            if (plain_header(line, nl, &tag, &tag_len) == nullptr) {
                item = Py_False;
                Py_INCREF(item);
            } else if (tag_session(tag, tag_len, &sid)) {
                item = PyUnicode_DecodeASCII(sid.data(), static_cast<Py_ssize_t>(sid.size()),
                                             "strict");
                if (item == nullptr) {
                    Py_CLEAR(out);
                    break;
                }
            } else {
                item = Py_None;
                Py_INCREF(item);
            }
        }
        PyList_SET_ITEM(out, i, item);
        last = item;
        last_end = end;
    }
    PyBuffer_Release(&view);
    Py_DECREF(ends);
    return out;
}

PyMethodDef module_methods[] = {
    {"tag_sessions", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(tag_sessions)),
     METH_FASTCALL,
     "tag_sessions(block, ends) -> each line's prog[pid], None (no pid) or False (not plain)"},
    {nullptr, nullptr, 0, nullptr},
};

PyMethodDef Matcher_methods[] = {
    {"scan", reinterpret_cast<PyCFunction>(Matcher_scan), METH_O,
     "scan(block) -> [(line end, rule index, host start, host end)] for matching lines"},
    {"track", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(Matcher_track)),
     METH_FASTCALL,
     "track(block, windows, now, oldest, latest, stamp_time, on_full, sessions=None) -> "
     "(failures per rule, ignored, stale)"},
    {nullptr, nullptr, 0, nullptr},
};

PyTypeObject MatcherType = {
    PyVarObject_HEAD_INIT(nullptr, 0)
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "kfwguard.matching._native",
    "A text filter's block scan in C++ on RE2 (see engine.TextFilter.scan_lines).", -1,
    module_methods, nullptr, nullptr, nullptr, nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__native(void) {
    MatcherType.tp_name = "kfwguard.matching._native.Matcher";
    MatcherType.tp_basicsize = sizeof(MatcherObject);
    MatcherType.tp_dealloc = reinterpret_cast<destructor>(Matcher_dealloc);
    MatcherType.tp_flags = Py_TPFLAGS_DEFAULT;
    MatcherType.tp_doc = "Matcher(patterns, host_groups, programs, header, ignore=None)";
    MatcherType.tp_methods = Matcher_methods;
    MatcherType.tp_init = reinterpret_cast<initproc>(Matcher_init);
    MatcherType.tp_new = Matcher_new;
    if (PyType_Ready(&MatcherType) < 0) return nullptr;
    WindowsType.tp_name = "kfwguard.matching._native.Windows";
    WindowsType.tp_basicsize = sizeof(WindowsObject);
    WindowsType.tp_dealloc = reinterpret_cast<destructor>(Windows_dealloc);
    WindowsType.tp_flags = Py_TPFLAGS_DEFAULT;
    WindowsType.tp_doc = "Windows(max_entries, findtime, maxretry, resolve): a jail's failures";
    WindowsType.tp_methods = Windows_methods;
    WindowsType.tp_getset = Windows_getset;
    Windows_sequence.sq_length = reinterpret_cast<lenfunc>(Windows_len);
    WindowsType.tp_as_sequence = &Windows_sequence;
    WindowsType.tp_init = reinterpret_cast<initproc>(Windows_init);
    WindowsType.tp_new = Windows_new;
    if (PyType_Ready(&WindowsType) < 0) return nullptr;
    SessionsType.tp_name = "kfwguard.matching._native.Sessions";
    SessionsType.tp_basicsize = sizeof(SessionsObject);
    SessionsType.tp_dealloc = reinterpret_cast<destructor>(Sessions_dealloc);
    SessionsType.tp_flags = Py_TPFLAGS_DEFAULT;
    SessionsType.tp_doc = "Sessions(names, kinds, make_hit, hold, max_sessions): a paired "
                          "filter's held hits";
    SessionsType.tp_methods = Sessions_methods;
    SessionsType.tp_getset = Sessions_getset;
    Sessions_sequence.sq_length = reinterpret_cast<lenfunc>(Sessions_len);
    SessionsType.tp_as_sequence = &Sessions_sequence;
    SessionsType.tp_init = reinterpret_cast<initproc>(Sessions_init);
    SessionsType.tp_new = Sessions_new;
    if (PyType_Ready(&SessionsType) < 0) return nullptr;
    PyObject* module = PyModule_Create(&module_def);
    if (module == nullptr) return nullptr;
    PyTypeObject* types[] = {&MatcherType, &WindowsType, &SessionsType};
    const char* names[] = {"Matcher", "Windows", "Sessions"};
    for (int i = 0; i < 3; ++i) {
        Py_INCREF(types[i]);
        if (PyModule_AddObject(module, names[i], reinterpret_cast<PyObject*>(types[i])) < 0) {
            Py_DECREF(types[i]);
            Py_DECREF(module);
            return nullptr;
        }
    }
    return module;
}
