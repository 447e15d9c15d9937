use async_graphql::http::GraphiQLSource;
use poem::{handler, web::Html};

/// The GraphiQL playground, pointed at `/graphql`.
#[handler]
pub async fn graphiql() -> Html<String> {
    Html(GraphiQLSource::build().endpoint("/graphql").title("authgraph").finish())
}
