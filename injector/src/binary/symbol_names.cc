#include "binary/symbol_names.h"

#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <vector>

namespace polus {

namespace {

bool is_identifier_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$';
}

bool ends_with(std::string_view text, std::string_view tail) {
  return text.size() >= tail.size() && text.substr(text.size() - tail.size()) == tail;
}

/// Whether position `at` of `text` starts the keyword "operator" (not part of a longer name).
bool operator_at(std::string_view text, size_t at) {
  constexpr std::string_view kOperator = "operator";
  if (text.substr(at, kOperator.size()) != kOperator) return false;
  if (at > 0 && is_identifier_char(text[at - 1])) return false;
  size_t after = at + kOperator.size();
  return after >= text.size() || !is_identifier_char(text[after]);
}

/// Positions of the top-level characters of `text`: outside (), <>, [] and {} — but an
/// operator's own symbols ("operator<", "operator()", "operator->") are not brackets.
std::vector<bool> top_level_mask(std::string_view text) {
  std::vector<bool> top(text.size(), false);
  int depth = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (operator_at(text, i)) {
      // The operator's own symbol ("()", "[]", "<<", "->", "<=>"...) is no bracket. gcc's
      // demangler writes a template argument list after it with a space: "operator< <int>".
      size_t end = i + 8;
      while (end < text.size() && text[end] == ' ') ++end;
      if (text.substr(end, 2) == "()" || text.substr(end, 2) == "[]") {
        end += 2;
      } else {
        while (end < text.size() && std::string_view("<>=!+-*/%^&|~,").find(text[end]) != std::string_view::npos) ++end;
      }
      for (size_t k = i; k < end; ++k) top[k] = depth == 0;
      i = end - 1;
      continue;
    }
    char c = text[i];
    if (c == '(' || c == '<' || c == '[' || c == '{') {
      top[i] = depth == 0;
      ++depth;
    } else if (c == ')' || c == '>' || c == ']' || c == '}') {
      if (depth > 0) --depth;
      top[i] = depth == 0;
    } else {
      top[i] = depth == 0;
    }
  }
  return top;
}

}  // namespace

SymbolSpec parse_symbol_spec(std::string_view text) {
  SymbolSpec spec;
  if (size_t bang = text.find('!'); bang != std::string_view::npos && bang > 0 && bang + 1 < text.size() &&
                                    text[bang + 1] != '=') {
    std::string_view object = text.substr(0, bang);
    if (object.find_first_of(":(<> ") == std::string_view::npos && !ends_with(object, "operator")) {
      spec.object = std::string(object);
      text = text.substr(bang + 1);
    }
  }
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != ':') continue;
    if (i + 1 < text.size() && text[i + 1] == ':') break;  // a C++ scope: no file part before it
    std::string_view file = text.substr(0, i);
    if (!file.empty() && file.find_first_of("()<> ") == std::string_view::npos) {
      spec.file = std::string(file);
      text = text.substr(i + 1);
    }
    break;
  }
  spec.name = std::string(text);
  if (size_t at = spec.name.find("@@"); at != std::string::npos) spec.name.resize(at);
  return spec;
}

std::string demangle(std::string_view name) {
  if (name.size() < 3 || name.substr(0, 2) != "_Z") return "";
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> text(
      abi::__cxa_demangle(std::string(name).c_str(), nullptr, nullptr, &status), &std::free);
  return status == 0 && text ? std::string(text.get()) : std::string();
}

std::string canonical_cxx_name(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == ' ' || c == '\t' || c == '\n') {
      // Keep one space only where two identifier characters would otherwise merge.
      size_t next = i;
      while (next < text.size() && (text[next] == ' ' || text[next] == '\t' || text[next] == '\n')) ++next;
      if (!out.empty() && next < text.size() && is_identifier_char(out.back()) && is_identifier_char(text[next])) {
        out += ' ';
      }
      i = next - 1;
      continue;
    }
    out += c;
  }
  return out;
}

CxxNameForms cxx_name_forms(const std::string& demangled) {
  CxxNameForms forms;
  forms.full = canonical_cxx_name(demangled);
  const std::string& text = demangled;
  std::vector<bool> top = top_level_mask(text);
  // The parameter list: the last top-level "(...)" followed only by qualifiers.
  size_t params = std::string::npos;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '(' || !top[i]) continue;
    size_t close = i + 1;
    for (int depth = 1; close < text.size() && depth > 0; ++close) {
      if (text[close] == '(') ++depth;
      if (text[close] == ')') --depth;
    }
    std::string tail = canonical_cxx_name(std::string_view(text).substr(close));
    for (std::string_view qualifier : {"const", "volatile", "&&", "&", "noexcept", " "}) {
      for (size_t at; (at = tail.find(qualifier)) != std::string::npos;) tail.erase(at, qualifier.size());
    }
    if (tail.empty()) params = i;
  }
  std::string_view head = std::string_view(text).substr(0, params == std::string::npos ? text.size() : params);
  // A return type (template instances carry one) ends at the last top-level space before the
  // name, but not within "operator int" & co.
  size_t name_start = 0;
  for (size_t i = 0; i < head.size(); ++i) {
    if (operator_at(head, i)) break;
    if (head[i] == ' ' && top[i]) name_start = i + 1;
  }
  std::string_view name = head.substr(name_start);
  forms.bare = canonical_cxx_name(name);
  forms.signature = canonical_cxx_name(std::string_view(text).substr(name_start));
  forms.bare_untemplated = forms.bare;
  if (!name.empty() && name.back() == '>' && top[name_start + name.size() - 1]) {
    // Drop the last template argument list: back to its matching '<'.
    int depth = 0;
    for (size_t i = name.size(); i-- > 0;) {
      if (name[i] == '>') ++depth;
      if (name[i] == '<' && --depth == 0) {
        forms.bare_untemplated = canonical_cxx_name(name.substr(0, i));
        break;
      }
    }
  }
  return forms;
}

std::optional<CloneName> split_clone_name(std::string_view name) {
  struct Part {
    std::string_view word;
    CloneKind kind;
    bool numbered;  // followed by ".N"
  };
  static const Part kParts[] = {
      {"constprop", CloneKind::kSpecialised, true}, {"isra", CloneKind::kSpecialised, true},
      {"clone", CloneKind::kSpecialised, true},     {"specialized", CloneKind::kSpecialised, true},
      {"part", CloneKind::kPart, true},             {"cold", CloneKind::kColdPart, false},
      {"lto_priv", CloneKind::kSameFunction, true}, {"localalias", CloneKind::kSameFunction, false},
  };
  // How bad a kind is for a patch of the base name: the worst part decides.
  auto rank = [](CloneKind kind) {
    switch (kind) {
      case CloneKind::kSameFunction: return 0;
      case CloneKind::kColdPart: return 1;
      case CloneKind::kPart: return 2;
      case CloneKind::kSpecialised: return 3;
    }
    return 3;
  };
  for (size_t dot = name.find('.', 1); dot != std::string_view::npos; dot = name.find('.', dot + 1)) {
    std::string_view rest = name.substr(dot);
    CloneKind worst = CloneKind::kSameFunction;
    bool parsed = !rest.empty();
    while (parsed && !rest.empty()) {
      if (rest[0] != '.') {
        parsed = false;
        break;
      }
      rest.remove_prefix(1);
      const Part* match = nullptr;
      for (const Part& part : kParts) {
        if (rest.substr(0, part.word.size()) == part.word &&
            (rest.size() == part.word.size() || rest[part.word.size()] == '.')) {
          match = &part;
          break;
        }
      }
      if (!match) {
        parsed = false;
        break;
      }
      rest.remove_prefix(match->word.size());
      if (rank(match->kind) > rank(worst)) worst = match->kind;
      // ".N" after a numbered part (".cold" may have one too).
      if (rest.size() >= 2 && rest[0] == '.' && rest[1] >= '0' && rest[1] <= '9') {
        size_t digits = 1;
        while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') ++digits;
        rest.remove_prefix(digits);
      } else if (match->numbered) {
        parsed = false;
      }
    }
    if (parsed) return CloneName{std::string(name.substr(0, dot)), std::string(name.substr(dot)), worst};
  }
  return std::nullopt;
}

std::string describe_clone(const CloneName& clone) {
  switch (clone.kind) {
    case CloneKind::kSameFunction:
      return "the function itself, renamed (" + clone.suffix + ")";
    case CloneKind::kColdPart:
      return "its unlikely paths, split off by gcc (" + clone.suffix + ")";
    case CloneKind::kPart:
      return "its body, split off by gcc's partial inlining (" + clone.suffix +
             "): callers that inlined the function's first test call it directly";
    case CloneKind::kSpecialised:
      return "a copy gcc specialised (" + clone.suffix +
             ": constant or removed parameters), which its callers call instead of the function, with other "
             "arguments";
  }
  return clone.suffix;
}

}  // namespace polus
