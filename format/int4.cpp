#include "format/int4.hpp"

namespace ferry {

std::optional<Scheme> parse_scheme(std::string_view name) {
  if (name == "bf16") return Scheme::bf16;
  if (name == "sym") return Scheme::sym;
  if (name == "sym-clip") return Scheme::sym_clip;
  if (name == "asym") return Scheme::asym;
  if (name == "asym-clip") return Scheme::asym_clip;
  if (name == "asym-hqq") return Scheme::asym_hqq;
  return std::nullopt;
}

std::string_view scheme_name(Scheme s) {
  switch (s) {
    case Scheme::bf16:
      return "bf16";
    case Scheme::sym:
      return "sym";
    case Scheme::sym_clip:
      return "sym-clip";
    case Scheme::asym:
      return "asym";
    case Scheme::asym_clip:
      return "asym-clip";
    case Scheme::asym_hqq:
      return "asym-hqq";
  }
  return "unknown";
}

bool scheme_has_mins(Scheme s) {
  return s == Scheme::asym || s == Scheme::asym_clip || s == Scheme::asym_hqq;
}
bool scheme_is_int4(Scheme s) {
  return s != Scheme::bf16;
}

}  // namespace ferry
