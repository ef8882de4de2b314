#include "text/jinja_value.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "base/error.hpp"

namespace ferry::jinja {

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void Dict::set(std::string key, Value v) {
  for (auto& [k, old] : items)
    if (k == key) return void(old = std::move(v));
  items.emplace_back(std::move(key), std::move(v));
}

Value Value::string(std::string v) {
  Value r = with(Kind::string);
  r.s = std::move(v);
  return r;
}

Value Value::of_list(List v) {
  Value r = with(Kind::list);
  r.list = std::make_shared<const List>(std::move(v));
  return r;
}

Value Value::of_dict(Dict v) {
  Value r = with(Kind::dict);
  r.dict = std::make_shared<const Dict>(std::move(v));
  return r;
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::undefined:
    case Kind::none:
      return false;
    case Kind::boolean:
      return v.b;
    case Kind::integer:
      return v.i != 0;
    case Kind::number:
      return v.f != 0;
    case Kind::string:
      return !v.s.empty();
    case Kind::list:
      return !v.list->empty();
    case Kind::dict:
      return !v.dict->items.empty();
    case Kind::ns:
    case Kind::macro:
      return true;
  }
  return false;
}

bool equal(const Value& a, const Value& b) {
  if (a.is_numeric() && b.is_numeric()) {
    if (a.kind == Kind::number || b.kind == Kind::number) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::string:
      return a.s == b.s;
    case Kind::list:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Kind::dict:
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* o = b.dict->find(k);
        if (!o || !equal(v, *o)) return false;
      }
      return true;
    case Kind::ns:
      return a.ns == b.ns;
    case Kind::macro:
      return a.macro == b.macro;
    default:
      return true;  // undefined == undefined, None == None
  }
}

std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  // Shortest round-trip digits in scientific form "d.ddde±x", then laid out as Python's repr:
  // positional for exponents -4..15, else "1.5e+16" with at least two exponent digits.
  const auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  const size_t e = sci.find('e');
  const int exp = std::stoi(sci.substr(e + 1));
  std::string sign = sci[0] == '-' ? "-" : "";
  std::string digits;
  for (char c : sci.substr(0, e))
    if (c >= '0' && c <= '9') digits += c;
  if (exp < -4 || exp >= 16) {
    std::string m = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    std::snprintf(buf, sizeof buf, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    return sign + m + buf;
  }
  if (exp < 0) return sign + "0." + std::string(size_t(-exp - 1), '0') + digits;
  if (digits.size() <= size_t(exp) + 1)
    return sign + digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
  return sign + digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
}

namespace {

// Python's repr of a str: single quotes unless the text holds one and no double quote.
std::string repr_string(std::string_view s) {
  const char q = s.find('\'') != s.npos && s.find('"') == s.npos ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    if (c == q || c == '\\')
      out += '\\', out += c;
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + q;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string json_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
  return py_float(d);
}

void json_into(const Value& v, int indent, int depth, std::string& out) {
  const std::string nl = indent < 0 ? "" : "\n" + std::string(size_t(indent * (depth + 1)), ' ');
  const std::string close = indent < 0 ? "" : "\n" + std::string(size_t(indent * depth), ' ');
  const char* sep = indent < 0 ? ", " : ",";
  switch (v.kind) {
    case Kind::undefined:
    case Kind::none:
      out += "null";
      return;
    case Kind::boolean:
      out += v.b ? "true" : "false";
      return;
    case Kind::integer:
      out += std::to_string(v.i);
      return;
    case Kind::number:
      out += json_float(v.f);
      return;
    case Kind::string:
      out += json_string(v.s);
      return;
    case Kind::list:
      if (v.list->empty()) return void(out += "[]");
      out += "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        out += (k ? sep : "") + nl;
        json_into((*v.list)[k], indent, depth + 1, out);
      }
      out += close + "]";
      return;
    case Kind::dict:
    case Kind::ns: {
      const Dict& d = v.kind == Kind::dict ? *v.dict : *v.ns;
      if (d.items.empty()) return void(out += "{}");
      out += "{";
      for (size_t k = 0; k < d.items.size(); ++k) {
        out += (k ? sep : "") + nl + json_string(d.items[k].first) + ": ";
        json_into(d.items[k].second, indent, depth + 1, out);
      }
      out += close + "}";
      return;
    }
    case Kind::macro:
      out += "null";
      return;
  }
}

}  // namespace

std::string repr(const Value& v) {
  switch (v.kind) {
    case Kind::string:
      return repr_string(v.s);
    case Kind::list: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + repr((*v.list)[k]);
      return out + "]";
    }
    case Kind::dict: {
      std::string out = "{";
      for (size_t k = 0; k < v.dict->items.size(); ++k)
        out += (k ? ", " : "") + repr_string(v.dict->items[k].first) + ": " +
               repr(v.dict->items[k].second);
      return out + "}";
    }
    default:
      return to_str(v);
  }
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Kind::undefined:
      return "";
    case Kind::none:
      return "None";
    case Kind::boolean:
      return v.b ? "True" : "False";
    case Kind::integer:
      return std::to_string(v.i);
    case Kind::number:
      return py_float(v.f);
    case Kind::string:
      return v.s;
    case Kind::ns:
      return "<Namespace>";
    case Kind::macro:
      return "<Macro>";
    default:
      return repr(v);
  }
}

std::string to_json(const Value& v, int indent) {
  std::string out;
  json_into(v, indent, 0, out);
  return out;
}

namespace {

Value from_ordered(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value::none();
    case nlohmann::ordered_json::value_t::boolean:
      return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
    case nlohmann::ordered_json::value_t::number_unsigned:
      return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_float:
      return Value::number(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value::string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List l;
      for (const auto& x : j) l.push_back(from_ordered(x));
      return Value::of_list(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      for (const auto& [k, x] : j.items()) d.set(k, from_ordered(x));
      return Value::of_dict(std::move(d));
    }
    default:
      return Value{};
  }
}

}  // namespace

Value value_from_json(std::string_view json_text) {
  const auto j = nlohmann::ordered_json::parse(json_text, nullptr, false);
  if (j.is_discarded()) throw Error("not valid JSON: " + std::string(json_text.substr(0, 60)));
  return from_ordered(j);
}

std::string_view kind_name(Kind k) {
  switch (k) {
    case Kind::undefined:
      return "undefined";
    case Kind::none:
      return "none";
    case Kind::boolean:
      return "bool";
    case Kind::integer:
      return "int";
    case Kind::number:
      return "float";
    case Kind::string:
      return "string";
    case Kind::list:
      return "list";
    case Kind::dict:
      return "dict";
    case Kind::ns:
      return "namespace";
    case Kind::macro:
      return "macro";
  }
  return "?";
}

bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

namespace {

size_t cp_len(unsigned char b) {
  return b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 1;
}

char32_t decode(std::string_view c) {
  const auto b = static_cast<unsigned char>(c[0]);
  if (c.size() == 1) return b;
  char32_t r = b & (0x7F >> c.size());
  for (size_t k = 1; k < c.size(); ++k) r = (r << 6) | (static_cast<unsigned char>(c[k]) & 0x3F);
  return r;
}

}  // namespace

std::vector<std::string_view> code_points(std::string_view s) {
  std::vector<std::string_view> out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = std::min(cp_len(static_cast<unsigned char>(s[i])), s.size() - i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

std::string py_strip(std::string_view s, bool left, bool right, const std::string* chars) {
  const std::vector<std::string_view> cps = code_points(s);
  const std::vector<std::string_view> set = chars ? code_points(*chars) : cps;
  auto strip_it = [&](std::string_view c) {
    if (!chars) return is_py_space(decode(c));
    for (std::string_view x : set)
      if (x == c) return true;
    return false;
  };
  size_t b = 0, e = cps.size();
  while (left && b < e && strip_it(cps[b])) ++b;
  while (right && e > b && strip_it(cps[e - 1])) --e;
  std::string out;
  for (size_t k = b; k < e; ++k) out += cps[k];
  return out;
}

std::vector<std::string> py_split(std::string_view s, const std::string* sep, int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep) {
    size_t at = 0;
    for (size_t hit;
         (maxsplit < 0 || int64_t(out.size()) < maxsplit) && (hit = s.find(*sep, at)) != s.npos;
         at = hit + sep->size())
      out.emplace_back(s.substr(at, hit - at));
    out.emplace_back(s.substr(at));
    return out;
  }
  std::string word;
  bool in_word = false;
  const std::vector<std::string_view> cps = code_points(s);
  for (size_t k = 0; k < cps.size(); ++k) {
    if (is_py_space(decode(cps[k]))) {
      if (in_word) out.push_back(std::exchange(word, {})), in_word = false;
      continue;
    }
    if (!in_word && maxsplit >= 0 && int64_t(out.size()) == maxsplit) {
      std::string rest;
      for (size_t j = k; j < cps.size(); ++j) rest += cps[j];
      out.push_back(py_strip(rest, false, true, nullptr));
      return out;
    }
    word += cps[k];
    in_word = true;
  }
  if (in_word) out.push_back(word);
  return out;
}

// Case mapping covers ASCII only: chat templates apply it to role names and keywords.
std::string py_upper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = char(c - 32);
  return out;
}

std::string py_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = char(c + 32);
  return out;
}

std::string py_title(std::string_view s) {
  std::string out(s);
  bool prev_letter = false;
  for (char& c : out) {
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (letter && !prev_letter && c >= 'a') c = char(c - 32);
    if (letter && prev_letter && c <= 'Z') c = char(c + 32);
    prev_letter = letter || (c >= '0' && c <= '9');
  }
  return out;
}

std::string py_capitalize(std::string_view s) {
  std::string out = py_lower(s);
  if (!out.empty() && out[0] >= 'a' && out[0] <= 'z') out[0] = char(out[0] - 32);
  return out;
}

std::string py_replace(std::string_view s, std::string_view from, std::string_view to,
                       int64_t count) {
  std::string out;
  size_t at = 0;
  int64_t done = 0;
  if (from.empty()) {  // Python inserts `to` between code points (and at both ends)
    for (std::string_view c : code_points(s)) {
      if (count < 0 || done < count) out += to, ++done;
      out += c;
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  for (size_t hit; (count < 0 || done < count) && (hit = s.find(from, at)) != s.npos; ++done) {
    out += s.substr(at, hit - at);
    out += to;
    at = hit + from.size();
  }
  out += s.substr(at);
  return out;
}

}  // namespace ferry::jinja
