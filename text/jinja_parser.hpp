// jinja2's grammar (parser.py, 3.1) for the statements chat templates use: if/elif/else, for
// (tuple targets, `if` filter, else, loop.*), set (names, tuples, ns.attr, {% set %}…{% endset %}),
// macro, break/continue (transformers enables loopcontrols) and transformers' {% generation %}.
// Expressions keep jinja2's precedence: conditional < or < and < not < comparisons/in < + - < ~ <
// * / // % < ** < unary - < postfix (.attr, [item], [a:b:c], call) with | filters and `is` tests.
// Anything else is an error naming the construct and its line.
#pragma once
#include <string_view>

#include "text/jinja_ast.hpp"

namespace ferry::jinja {

Body parse_template(std::string_view source);

}  // namespace ferry::jinja
