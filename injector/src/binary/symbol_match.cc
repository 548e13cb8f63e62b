#include "binary/symbol_match.h"

#include "common/format.h"

namespace polus {

std::vector<SymbolNames> analyse_names(const std::vector<Symbol>& symbols) {
  std::vector<SymbolNames> names(symbols.size());
  for (size_t i = 0; i < symbols.size(); ++i) {
    const std::string& name = symbols[i].name;
    names[i].clone = split_clone_name(name);
    std::string demangled = demangle(names[i].clone ? names[i].clone->base : name);
    if (!demangled.empty()) names[i].forms = cxx_name_forms(demangled);
  }
  return names;
}

std::string display_name(const std::string& name) {
  std::string demangled = demangle(name);
  return demangled.empty() ? name : demangled;
}

NameQuery::NameQuery(const SymbolSpec& spec, SymbolKind kind) : spec_(spec), kind_(kind) {
  canonical_ = canonical_cxx_name(spec.name);
  cxx_ = spec.name.find("::") != std::string::npos || spec.name.find_first_of("(<~") != std::string::npos ||
         spec.name.rfind("operator", 0) == 0;
}

bool NameQuery::accepts(const Symbol& symbol) const {
  if (kind_ == SymbolKind::kFunction && !symbol.is_function) return false;
  if (kind_ == SymbolKind::kData && symbol.is_function) return false;
  if (spec_.file.empty()) return true;
  return !symbol.is_global && !symbol.source_file.empty() &&
         (symbol.source_file == spec_.file || basename_of(symbol.source_file) == spec_.file);
}

std::vector<const Symbol*> NameQuery::match_raw(const std::vector<Symbol>& symbols) const {
  std::vector<const Symbol*> found;
  for (const Symbol& symbol : symbols) {
    if (symbol.name == spec_.name && accepts(symbol)) found.push_back(&symbol);
  }
  return found;
}

std::vector<const Symbol*> NameQuery::match_forms(const std::vector<Symbol>& symbols,
                                                  const std::vector<SymbolNames>& names) const {
  using Form = std::string CxxNameForms::*;
  auto by = [&](std::initializer_list<Form> forms) {
    std::vector<const Symbol*> found;
    for (size_t i = 0; i < symbols.size(); ++i) {
      const SymbolNames& n = names[i];
      if (n.clone || n.forms.full.empty() || !accepts(symbols[i])) continue;
      for (Form form : forms) {
        if (n.forms.*form == canonical_) {
          found.push_back(&symbols[i]);
          break;
        }
      }
    }
    return found;
  };
  for (auto forms : {std::initializer_list<Form>{&CxxNameForms::full, &CxxNameForms::signature},
                     std::initializer_list<Form>{&CxxNameForms::bare},
                     std::initializer_list<Form>{&CxxNameForms::bare_untemplated}}) {
    std::vector<const Symbol*> found = by(forms);
    if (!found.empty()) return found;
  }
  return {};
}

std::vector<std::pair<const Symbol*, CloneName>> NameQuery::clones(const std::vector<Symbol>& symbols,
                                                                   const std::vector<SymbolNames>& names) const {
  std::vector<std::pair<const Symbol*, CloneName>> found;
  for (size_t i = 0; i < symbols.size(); ++i) {
    const SymbolNames& n = names[i];
    if (!n.clone || !accepts(symbols[i])) continue;
    bool same = n.clone->base == spec_.name;
    if (!same && !n.forms.full.empty()) {
      same = n.forms.full == canonical_ || n.forms.signature == canonical_ || n.forms.bare == canonical_ ||
             n.forms.bare_untemplated == canonical_;
    }
    if (same) found.emplace_back(&symbols[i], *n.clone);
  }
  return found;
}

}  // namespace polus
