// Jinja's filters and tests, and the Python str/dict methods, that chat templates call. The
// parser refuses a name that is not here (at quantize time, not at chat time); the evaluator
// calls these with the arguments already evaluated.
#pragma once
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "text/jinja_value.hpp"

namespace ferry::jinja {

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  const Value* get(size_t index, std::string_view keyword) const;
};

bool known_filter(std::string_view name);
bool known_test(std::string_view name);
bool known_method(std::string_view name);

// Each throws ferry::Error (a one-line message without the template line; the evaluator adds
// it) on a type the operation does not take.
Value apply_filter(std::string_view name, const Value& v, const Args& a);
bool apply_test(std::string_view name, const Value& v, const Args& a);
Value call_method(const Value& self, std::string_view name, const Args& a);

// Python's len() of a string (code points), list or dict.
int64_t length_of(const Value& v);
// The items `for` walks: list elements, dict keys, a string's characters; none for undefined.
List iterate(const Value& v);
// Jinja's getattr(obj, name) / obj[key]: a dict entry, a list element (negative from the end),
// a namespace attribute; Undefined when absent.
Value get_item(const Value& obj, const Value& key);

}  // namespace ferry::jinja
