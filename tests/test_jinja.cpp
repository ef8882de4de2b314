// The Jinja engine for chat templates against transformers' own rendering
// (tools/reference/gen_jinja_golden.py -> tests/fixtures/chat/jinja_golden.json): seven real chat
// templates over nine conversations (system or not, multi-turn, Unicode, empty content, tool
// calls with tool definitions), with and without the generation prompt, byte for byte; one small
// template per construct; and the errors for what ferry does not run.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "base/error.hpp"
#include "test_util.hpp"
#include "text/jinja_template.hpp"

namespace ferry::jinja {
namespace {

using nlohmann::ordered_json;

const std::filesystem::path kChat =
    std::filesystem::path(FERRY_SOURCE_DIR) / "tests" / "fixtures" / "chat";

std::string read_text(const std::filesystem::path& p) {
  const std::vector<uint8_t> bytes = test::read_file(p);
  return std::string(bytes.begin(), bytes.end());
}

const ordered_json& golden() {
  static const ordered_json g = ordered_json::parse(read_text(kChat / "jinja_golden.json"));
  return g;
}

Dict dict_of(const ordered_json& j) {
  const Value v = value_from_json(j.dump());
  return v.is(Kind::dict) ? *v.dict : Dict{};
}

// The error a template throws when rendered, or "" when it renders.
std::string error_of(const Template& t, const Dict& vars) {
  try {
    t.render(vars);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Jinja, RendersRealChatTemplatesAsTransformersDoes) {
  const ordered_json& g = golden();
  size_t checked = 0;
  for (const ordered_json& entry : g.at("templates")) {
    const std::string name = entry.at("name");
    const Template t(read_text(kChat / entry.at("file").get<std::string>()));
    for (const ordered_json& c : g.at("cases")) {
      if (c.at("template") != name) continue;
      const ordered_json& conv = g.at("conversations").at(c.at("conversation").get<size_t>());
      Dict vars = dict_of(entry.at("specials"));
      vars.set("messages", value_from_json(conv.at("messages").dump()));
      vars.set("tools",
               conv.contains("tools") ? value_from_json(conv.at("tools").dump()) : Value::none());
      vars.set("documents", Value::none());
      vars.set("add_generation_prompt", Value::boolean(c.at("add_generation_prompt")));
      SCOPED_TRACE(name + " conversation " + c.at("conversation").dump() + " generation prompt " +
                   c.at("add_generation_prompt").dump());
      if (c.contains("error")) {
        EXPECT_NE(error_of(t, vars).find(c.at("error").get<std::string>()), std::string::npos)
            << error_of(t, vars);
      } else {
        EXPECT_EQ(t.render(vars), c.at("text").get<std::string>());
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, g.at("cases").size());  // every case belongs to a template that was read
  EXPECT_GE(checked, 100u);
}

TEST(Jinja, EachConstructRendersAsJinja2Does) {
  for (const ordered_json& c : golden().at("constructs")) {
    const std::string src = c.at("template");
    SCOPED_TRACE(src);
    const Template t(src);
    const Dict vars = dict_of(c.at("vars"));
    if (c.contains("error")) {
      EXPECT_NE(error_of(t, vars), "");  // raise_exception and undefined access both fail
      if (src.find("raise_exception") != std::string::npos) {
        EXPECT_NE(error_of(t, vars).find(c.at("error").get<std::string>()), std::string::npos);
      }
    } else {
      EXPECT_EQ(t.render(vars), c.at("text").get<std::string>());
    }
  }
}

// A template ferry cannot parse or run names the line and the construct.
std::string parse_error(std::string_view src) {
  try {
    Template t(src);
  } catch (const Error& e) {
    EXPECT_EQ(e.setting, Setting::chat_template);
    return e.what();
  }
  return "";
}

TEST(Jinja, UnsupportedConstructsAreErrorsNamingLineAndConstruct) {
  EXPECT_EQ(parse_error("a\nb\n{% include 'x.jinja' %}"),
            "chat template line 3: the statement {% include %} is not supported (ferry's Jinja "
            "runs if, for, set, macro, break, continue)");
  EXPECT_EQ(parse_error("{{ x | wordwrap(3) }}"),
            "chat template line 1: the filter 'wordwrap' is not supported");
  EXPECT_EQ(parse_error("\n{% if x is sameas_not %}{% endif %}"),
            "chat template line 2: the test 'is sameas_not' is not supported");
  EXPECT_EQ(parse_error("{{ s.format(1) }}"),
            "chat template line 1: the method .format() is not supported");
  EXPECT_EQ(parse_error("{% for x in y %}"),
            "chat template line 1: the template ends inside a block: expected {% else %}");
  EXPECT_EQ(parse_error("{% endif %}"),
            "chat template line 1: unexpected {% endif %} (no block of that kind is open)");
  EXPECT_EQ(parse_error("x\n{{ 'open"), "chat template line 2: a string literal is not closed");
  EXPECT_EQ(parse_error("{{ a +  }}"), "chat template line 1: expected an expression, found '}}'");
  EXPECT_EQ(parse_error("{{ a ; b }}"), "chat template line 1: unexpected character ';' in a tag");
  EXPECT_EQ(parse_error("{# never closed"), "chat template line 1: a {# comment #} is not closed");
  // Numbers past int64: a literal, and the index form x.N (found by fuzz_jinja, which std::stoll
  // escaped as std::out_of_range).
  EXPECT_EQ(parse_error("{{ 99999999999999999999 }}"),
            "chat template line 1: the number 99999999999999999999 is out of range");
  EXPECT_EQ(parse_error("\n{{ m.55555555555555555555555 }}"),
            "chat template line 2: the number 55555555555555555555555 is out of range");
  EXPECT_EQ(parse_error("{% macro m() %}{% endmacro %}{{ m() }}\n{{ lipsum(2) }}"),
            "chat template line 2: the function lipsum() is not supported (ferry's Jinja has "
            "raise_exception, strftime_now, namespace, dict, range and the template's macros)");
}

TEST(Jinja, RuntimeErrorsNameTheLine) {
  EXPECT_EQ(error_of(Template("\n\n{{ raise_exception('no ' ~ 'tools') }}"), {}),
            "chat template raised an error: no tools");
  EXPECT_EQ(error_of(Template("line\n{{ x.y.z }}"), {}),
            "chat template line 2: 'y' of an undefined value (a missing variable or key)");
  EXPECT_EQ(error_of(Template("{{ 1 + 'a' }}"), {}),
            "chat template line 1: cannot apply + to a int and a string");
  EXPECT_EQ(
      error_of(Template("{% macro nope() %}{% endmacro %}{% set nope = 1 %}{{ nope(1) }}"), {}),
      "chat template line 1: 'nope' is not a function ferry's Jinja knows (raise_exception, "
      "strftime_now, namespace, dict, range, or a macro)");
  EXPECT_EQ(error_of(Template("{% set x = 1 %}{% set x.a = 2 %}"), {}),
            "chat template line 1: set x.a: x is not a namespace() (only namespaces take "
            "attribute assignment)");
}

// Bounds that stop a hostile or broken template with an error instead of a crash or a hang.
TEST(Jinja, RunawayTemplatesAreStopped) {
  EXPECT_EQ(error_of(Template("{{ range(100001) | length }}"), {}),
            "chat template line 1: range() of more than 100000 items (jinja2's limit)");
  EXPECT_EQ(Template("{{ range(100000) | length }}").render({}), "100000");
  EXPECT_NE(parse_error("{{ " + std::string(500, '(') + "1" + std::string(500, ')') + " }}")
                .find("nest more than 100 deep"),
            std::string::npos);
  EXPECT_NE(error_of(Template("{% for a in range(99999) %}{% for b in range(99999) %}x"
                              "{% endfor %}{% endfor %}"),
                     {})
                .find("steps"),
            std::string::npos);
  EXPECT_NE(error_of(Template("{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                              "{% set ns.s = ns.s ~ ns.s %}{% endfor %}"),
                     {})
                .find("grew past 64 MiB"),
            std::string::npos);
  EXPECT_NE(error_of(Template("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"), {})
                .find("macros call each other more than 200 deep"),
            std::string::npos);
}

TEST(Jinja, StrftimeNowFormatsTodayLocally) {
  const std::string d = Template("{{ strftime_now('%Y-%m-%d') }}").render({});
  ASSERT_EQ(d.size(), 10u);
  EXPECT_EQ(d[4], '-');
  EXPECT_EQ(d[7], '-');
}

TEST(Jinja, PythonFloatRepr) {
  EXPECT_EQ(py_float(1.0), "1.0");
  EXPECT_EQ(py_float(0.1), "0.1");
  EXPECT_EQ(py_float(1e16), "1e+16");
  EXPECT_EQ(py_float(123456789012345.0), "123456789012345.0");
  EXPECT_EQ(py_float(0.0001), "0.0001");
  EXPECT_EQ(py_float(0.00001), "1e-05");
  EXPECT_EQ(py_float(-2.5e-10), "-2.5e-10");
}

}  // namespace
}  // namespace ferry::jinja
