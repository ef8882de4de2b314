// The parsed form of a chat template: expressions and statements as jinja2's parser builds
// them, with the template line of each for error messages.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "text/jinja_value.hpp"

namespace ferry::jinja {

struct Expr;
struct Stmt;
using ExprPtr = std::unique_ptr<Expr>;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class ExprKind : uint8_t {
  literal,  // value
  name,     // name
  list,     // args: elements (tuples too)
  dict,     // args: key, value, key, value, ...
  attr,     // args[0].name
  item,     // args[0][args[1]]
  slice,    // args[0][args[1]:args[2]:args[3]], each bound may be null
  call,     // args[0](args[1..], kwargs)
  filter,   // args[0] | name(args[1..], kwargs)
  test,     // args[0] is [not] name(args[1..]); `negate`
  unary,    // name ("not", "-", "+") args[0]
  binary,   // args[0] name args[1]: or and == != < > <= >= in notin + - ~ * / // % **
  cond,     // args[0] if args[1] else args[2] (null: undefined)
};

struct Expr {
  ExprKind kind;
  int line = 0;
  std::string name;
  Value value;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  bool negate = false;
};

struct MacroNode {
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param, null when it has none
  Body body;
};

enum class StmtKind : uint8_t {
  text,       // text
  output,     // {{ expr }}
  if_,        // branches (a null condition is the else)
  for_,       // for targets in expr [if filter]: body [else: else_body]
  set,        // set targets = expr, or set targets[0].attr = expr
  set_block,  // set targets[0] %}body{% endset
  macro,      // macro
  break_,
  continue_,
  scope,  // body rendered in place ({% generation %})
};

struct Stmt {
  StmtKind kind;
  int line = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr filter;
  std::vector<std::string> targets;
  std::string attr;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body, else_body;
  std::shared_ptr<MacroNode> macro;
};

}  // namespace ferry::jinja
